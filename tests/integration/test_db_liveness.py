"""Pool liveness without a pre-ping round trip: a pooled connection the server ended is replaced before use."""

from __future__ import annotations

import time
from decimal import Decimal

import psycopg
from sqlalchemy import text
from sqlalchemy.engine import URL

from reconciler import db
from reconciler.balances import BalanceManager
from reconciler.db import connection_is_alive, make_engine
from tests.factories import make_customer


def _terminate(url: URL, pid: int) -> None:
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("select pg_terminate_backend(%s)", (pid,))
    time.sleep(0.2)  # the terminated backend's FATAL message reaches the socket


def test_a_terminated_pooled_connection_is_replaced_before_the_statement(db_url: URL) -> None:
    """The server ends an idle pooled connection: the next call gets a fresh one and succeeds, no error."""
    engine = make_engine(db_url, pool_size=1, max_overflow=0)
    try:
        make_customer(engine, 1, "0.00")
        core = BalanceManager(engine)
        core.update_balance(1, "1.00", kind="deposit")
        with engine.connect() as conn:
            pid = conn.execute(text("select pg_backend_pid()")).scalar_one()
        _terminate(db_url, pid)
        assert core.update_balance(1, "2.00", kind="deposit").balance_after == Decimal("3.00")
        assert core.get_balance(1) == Decimal("3.00")
        with engine.connect() as conn:
            assert conn.execute(text("select pg_backend_pid()")).scalar_one() != pid
    finally:
        engine.dispose()


def test_liveness_costs_no_round_trip_unless_idle_or_readable(db_url: URL) -> None:
    """A busy connection is judged by its socket alone; a long-idle one, or a closed one, is pinged."""
    dsn = db_url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn) as conn:
        before = conn.pgconn.transaction_status
        assert connection_is_alive(conn, 0.0)
        assert connection_is_alive(conn, db.LIVENESS_IDLE_SECONDS + 1)  # pinged, and left idle
        assert conn.pgconn.transaction_status == before
        pid = conn.info.backend_pid
        _terminate(db_url, pid)
        assert not connection_is_alive(conn, 0.0)


def test_a_manager_keeps_connections_only_while_the_pool_has_spare_ones(db_url: URL) -> None:
    """Between calls the core keeps its connection (no checkout per call) unless the pool would run short;
    close() gives them back."""
    engine = make_engine(db_url, pool_size=3, max_overflow=0)
    try:
        make_customer(engine, 1, "0.00")
        core = BalanceManager(engine)
        core.update_balance(1, "1.00", kind="deposit")
        assert engine.pool.checkedout() == 1  # type: ignore[attr-defined]  (kept, in autocommit)
        with engine.connect() as a, engine.connect() as b:
            assert a.execute(text("select 1")).scalar_one() == b.execute(text("select 1")).scalar_one() == 1
            assert core.get_balance(1) == Decimal("1.00")  # the pool is full now: given back after the call
            assert engine.pool.checkedout() == 2  # type: ignore[attr-defined]  (only a and b)
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        core.get_balance(1)
        core.close()
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        engine.dispose()
