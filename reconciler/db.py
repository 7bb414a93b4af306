"""Engines for the ledger database: ``RECONCILER_DATABASE_URL`` when set, else an embedded PostgreSQL.

The embedded server (pgserver: a real PostgreSQL 16 on a Unix socket, no TCP) lives under
``$RECONCILER_HOME/pgdata``, starts on demand, keeps running for later commands, and stops with
``reconciler db stop``. Every engine speaks psycopg 3; a URL is never printed with its password.
"""

from __future__ import annotations

import os
import select
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DisconnectionError, OperationalError

from reconciler.config import EMBEDDED_DATABASE, configured_database_url, configured_read_database_url, home_dir
from reconciler.db_errors import first_line, lost_database
from reconciler.embedded import ensure_database_at, pgdata_dir, prepare_runtime_dir, start_server
from reconciler.errors import DatabaseLostError, DatabaseUnavailableError

DEFAULT_POOL_SIZE = 10
#: A pooled connection idle for longer than this is pinged (one round trip) before it is handed out; a busier
#: one is checked without a round trip (see :func:`_check_liveness`).
LIVENESS_IDLE_SECONDS = 30.0
_CHECKED_IN_AT = "reconciler.checked_in_at"


def normalise_url(url: str | URL) -> URL:
    """Return ``url`` as a SQLAlchemy URL on the psycopg 3 driver (``postgresql://`` -> ``postgresql+psycopg://``)."""
    parsed = make_url(url) if isinstance(url, str) else url
    if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def describe_url(url: str | URL) -> str:
    """A URL safe to print: the password is masked."""
    return normalise_url(url).render_as_string(hide_password=True)


def start_embedded(home: Path | None = None, database: str = EMBEDDED_DATABASE) -> URL:
    """Start (or attach to) the embedded PostgreSQL and return a URL for ``database``, created if missing."""
    socket_dir = start_server(home)
    url = URL.create("postgresql+psycopg", username="postgres", host="localhost", database=database,
                     query={"host": str(socket_dir)})
    ensure_database(url)
    return url


def ensure_database(url: URL) -> None:
    """Create the database named in ``url`` when it does not exist (connecting to ``postgres`` to do so)."""
    name = url.database
    assert name
    ensure_database_at(_libpq_dsn(url), name)


def _libpq_dsn(url: URL) -> str:
    return normalise_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def stop_embedded(home: Path | None = None) -> bool:
    """Stop the embedded server if it runs; return whether it was running."""
    pgdata = pgdata_dir(home)
    pid_file = pgdata / "postmaster.pid"
    if not pid_file.exists():
        return False
    prepare_runtime_dir(home or home_dir())
    from pgserver._commands import POSTGRES_BIN_PATH  # noqa: PLC0415

    command = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w", "stop"]
    if os.geteuid() == 0:
        command = ["runuser", "-u", "pgserver", "--", *command]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    handles = pgdata / ".handle_pids.json"
    if handles.exists():
        handles.write_text("[]")
    return result.returncode == 0


def database_url() -> URL:
    """The ledger database: ``RECONCILER_DATABASE_URL`` if set, else the embedded server (started on demand)."""
    configured = configured_database_url()
    return normalise_url(configured) if configured else start_embedded()


def make_engine(url: str | URL | None = None, *, check: bool = True, **kwargs: Any) -> Engine:
    """An engine on ``url`` (default :func:`database_url`); with ``check`` it connects once and raises
    :class:`DatabaseUnavailableError` with one clear line when the database cannot be reached.

    Liveness: instead of SQLAlchemy's pre-ping (a round trip on EVERY checkout), each checkout looks at the
    connection's socket without a round trip and pings only when that finds something, or when the connection
    sat idle for :data:`LIVENESS_IDLE_SECONDS` (:func:`_check_liveness`). A connection found dead is replaced
    before any statement is sent on it, so that retry is always safe. ``pool_pre_ping=True`` restores the
    pre-ping (and turns the cheaper check off)."""
    target = normalise_url(url) if url is not None else database_url()
    if target.drivername != "postgresql+psycopg":
        raise DatabaseUnavailableError(
            f"the ledger database URL {describe_url(target)} is not a PostgreSQL URL; set RECONCILER_DATABASE_URL "
            f"(and RECONCILER_READ_DATABASE_URL) to postgresql://USER:PASSWORD@HOST:PORT/DATABASE")
    options: dict[str, Any] = {"pool_pre_ping": False, "pool_size": DEFAULT_POOL_SIZE, "max_overflow": 10}
    options.update(kwargs)
    engine = create_engine(target, **options)
    if not options["pool_pre_ping"] and engine.dialect.driver == "psycopg":
        event.listen(engine, "checkout", _check_liveness)
        event.listen(engine, "checkin", _note_checkin)
    if check:
        check_connection(engine)
    return engine


def _note_checkin(dbapi_connection: Any, record: Any) -> None:
    record.info[_CHECKED_IN_AT] = time.monotonic()


def connection_is_alive(conn: psycopg.Connection[Any], idle_seconds: float) -> bool:
    """Whether an idle psycopg connection can take a statement, at the least cost that keeps that safe.

    An idle connection's socket has nothing to read. When the server ends the session (a restart, a
    terminated backend, an idle-session timeout) it sends an error and closes it, so the socket becomes
    readable: that costs one ``select()`` to see, no round trip. Then, or after ``idle_seconds`` >=
    :data:`LIVENESS_IDLE_SECONDS` (a network that dropped the connection silently), one ``SELECT 1`` decides.
    Nothing of a caller's statement has been sent when this answers, so replacing a dead connection is safe."""
    if conn.closed or conn.broken:
        return False
    try:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError, psycopg.Error):
        return False
    if not readable and idle_seconds < LIVENESS_IDLE_SECONDS:
        return True
    try:
        conn.execute("SELECT 1")
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.rollback()
    except psycopg.Error:
        return False
    return True


def _check_liveness(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """Pool ``checkout`` hook: hand out only a live connection (:func:`connection_is_alive`); a dead one raises
    DisconnectionError, on which the pool discards it and checks out (or opens) another."""
    idle = time.monotonic() - record.info.get(_CHECKED_IN_AT, 0.0) if _CHECKED_IN_AT in record.info else 0.0
    if not connection_is_alive(dbapi_connection, idle):
        raise DisconnectionError("the pooled connection was found closed by the server before use")


# ---- the read-only side -----------------------------------------------------------------------------------

#: libpq startup option making every transaction of a session read only (for engines we do not build, GX's).
READ_ONLY_OPTION = "-cdefault_transaction_read_only=on"  # no space: a URL would carry it as "+"


def read_database_url() -> URL:
    """Where read-only steps read: ``RECONCILER_READ_DATABASE_URL`` if set, else the primary (:func:`database_url`)."""
    configured = configured_read_database_url()
    return normalise_url(configured) if configured else database_url()


def read_only_url(url: str | URL) -> URL:
    """``url`` with :data:`READ_ONLY_OPTION` in its libpq ``options``: every transaction on it is read only."""
    parsed = normalise_url(url)
    existing = parsed.query.get("options")
    current = " ".join(existing) if isinstance(existing, tuple) else (existing or "")
    if READ_ONLY_OPTION in current:
        return parsed
    return parsed.update_query_dict({"options": f"{current} {READ_ONLY_OPTION}".strip()})


def _begin_read_only(conn: Connection) -> None:
    conn.exec_driver_sql("set transaction read only")


def make_read_engine(url: str | URL | None = None, *, check: bool = True, **kwargs: Any) -> Engine:
    """An engine for read-only steps on ``url`` (default :func:`read_database_url`): every transaction it begins
    is ``SET TRANSACTION READ ONLY``, so a bug cannot write there even with a powerful login."""
    target = normalise_url(url) if url is not None else read_database_url()
    engine = make_engine(target, check=False, **kwargs)
    event.listen(engine, "begin", _begin_read_only)
    if check:
        check_connection(engine)
    return engine


@contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """One REPEATABLE READ, READ ONLY transaction on ``engine`` (one snapshot; it cannot write)."""
    with engine.connect() as conn:
        conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            conn.exec_driver_sql("set transaction read only")
            yield conn


def check_connection(engine: Engine) -> None:
    try:
        with engine.connect() as conn:
            conn.execute(text("select 1"))
    except OperationalError as exc:
        url = engine.url
        host = url.query.get("host") or url.host or "localhost"
        where = f"host {host}, port {url.port or 5432}, database {url.database}"
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else "no answer"
        raise DatabaseUnavailableError(
            f"cannot reach the ledger database ({where}): {reason}. Check that PostgreSQL runs there and that "
            f"RECONCILER_DATABASE_URL ({describe_url(url)}) is right, or unset it to use the embedded database."
        ) from None


def database_lost(exc: BaseException, url: str | URL, *, doing: str,
                  rerun: str = "rerunning is safe: every step is one transaction, and a rerun finds everything "
                               "again without duplicates") -> DatabaseLostError | None:
    """A :class:`DatabaseLostError` when ``exc`` (or its cause) says the database went away, else None. Its
    message is one line: what was lost (``doing``), which database (:func:`describe_url`, no password), the
    database's own reason (never SQL text or SQLAlchemy's background link) and what to do."""
    lost = lost_database(exc)
    if lost is None:
        return None
    reason = first_line(lost) if not isinstance(lost, DatabaseUnavailableError) else "the connection was lost"
    return DatabaseLostError(f"lost the ledger database ({describe_url(url)}) while {doing}: {reason}. "
                             f"Once it is back, {rerun}")
