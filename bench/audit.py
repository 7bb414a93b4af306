"""Bench section ``audit``: what the hash-chained audit trail costs per correction.

Each correction (``BalanceManager.reconcile_balance``, policy ``ledger``, on a customer drifting by 1.00)
queues one ``correction`` event in the core's statement, chained into ``reconciler.audit_log`` at commit
under the chain's lock (the head row). Measured against the same corrections with
``reconciler.append_audit`` replaced by a no-op in the bench's own database, in alternating rounds on fresh
customers so both see the same machine; median round reported:

- at 1 thread: the latency a correction pays for its audit row (one more round trip, the queue, and at
  commit the chaining with its SHA-256 in PostgreSQL), with PostgreSQL's defaults (the commit waits for the
  disk, and the audit row adds WAL to flush) and with ``synchronous_commit=off`` (the work alone: CPU);
- at 4 threads: corrections of different customers serialise on the chain's lock for their commit, so this is
  where contention shows.

Plus the size of one audit row on disk and how fast ``audit verify`` recomputes the chain.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL

from reconciler.audit import verify_chain
from reconciler.balances import BalanceManager
from reconciler.db import make_engine, reading

SECTION = "audit"
#: Target: the chain's own work adds at most this share to a correction at 1 thread (synchronous_commit=off).
OVERHEAD_TARGET = 0.25


def row(name: str, value: float, unit: str, target: str | None = None, ok: bool | None = None) -> dict[str, object]:
    return {"section": SECTION, "name": name, "value": round(value, 4), "unit": unit, "target": target, "ok": ok}


def seed(engine: Engine, customers: int) -> None:
    """``customers`` customers, each with one 100.00 entry and a cached balance of 101.00 (drift 1.00)."""
    with engine.begin() as conn:
        conn.execute(text("""insert into customers (id, balance, updated_at)
                             select g, 101.00, now() from generate_series(1, :n) g"""), {"n": customers})
        conn.execute(text("""insert into customer_ledger_entries (customer_id, amount, kind, balance_after)
                             select g, 100.00, 'deposit', 100.00 from generate_series(1, :n) g"""), {"n": customers})
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("vacuum analyze"))


_NO_OP = """create or replace function reconciler.append_audit(events jsonb) returns integer
language sql security definer set search_path = pg_catalog, pg_temp as $$ select 0 $$"""


@contextmanager
def chain_switched(engine_url: URL, on: bool) -> Iterator[None]:
    """The audit append as migrated (``on``), or ``reconciler.append_audit`` replaced by a no-op in this bench's
    own database (same function, so the core's prepared statements follow) and restored afterwards."""
    if on:
        yield
        return
    dsn = engine_url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("select pg_get_functiondef('reconciler.append_audit(jsonb)'::regprocedure)").fetchone()
        assert row is not None
        original = str(row[0])
        conn.execute(_NO_OP)
        try:
            yield
        finally:
            conn.execute(original)


def correct_all(engine: Engine, customers: list[int], threads: int) -> float:
    """Correct every customer in ``customers`` on ``threads`` threads; return the elapsed seconds."""
    chunks = [customers[i::threads] for i in range(threads)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads + 1)

    def work(mine: list[int]) -> None:
        manager = BalanceManager(engine)
        barrier.wait()
        try:
            for customer in mine:
                result = manager.reconcile_balance(customer, "ledger", audit={"by": "bench"})
                assert result.changed
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(chunk,)) for chunk in chunks]
    for worker in workers:
        worker.start()
    barrier.wait()
    started = time.perf_counter()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return elapsed


def compare(engine: Engine, next_customers: Callable[[int], list[int]], threads: int, per_round: int,
            rounds: int, engine_url: URL) -> dict[bool, float]:
    """Median corrections per second with the chain on and off, rounds alternating."""
    rates: dict[bool, list[float]] = {True: [], False: []}
    for round_index in range(rounds):
        for on in ((True, False) if round_index % 2 == 0 else (False, True)):
            with chain_switched(engine_url, on):
                elapsed = correct_all(engine, next_customers(per_round), threads)
            rates[on].append(per_round / elapsed)
    return {on: statistics.median(values) for on, values in rates.items()}


def run(quick: bool, engine_url: URL) -> list[dict[str, object]]:
    """Run the section on ``engine_url`` (a freshly migrated database of its own) and return its rows."""
    # Many short alternating rounds: on a shared machine a burst of load then hits both variants alike.
    per_round = 100 if quick else 200
    rounds = 9 if quick else 25
    plan = [(1, True), (1, False), (4, True)]  # (threads, commits wait for the disk)
    total = 2 * rounds * per_round * len(plan)
    rows: list[dict[str, object]] = []
    engine = make_engine(engine_url, pool_size=8)
    unsynced = make_engine(engine_url, pool_size=8, connect_args={"options": "-csynchronous_commit=off"})
    try:
        seed(engine, total)
        pool: Iterator[int] = iter(range(1, total + 1))

        def take(n: int) -> list[int]:
            return [next(pool) for _ in range(n)]

        for threads, synced in plan:
            rates = compare(engine if synced else unsynced, take, threads, per_round, rounds, engine_url)
            with_ms, without_ms = 1000 / rates[True], 1000 / rates[False]
            label = f"{threads} thread{'s' if threads > 1 else ''}{'' if synced else ', synchronous_commit=off'}"
            cost, share = with_ms - without_ms, (with_ms - without_ms) / without_ms
            rows.append(row(f"corrections/s with the audit chain, {label}", rates[True], "corrections/s"))
            rows.append(row(f"corrections/s without it, {label}", rates[False], "corrections/s"))
            rows.append(row(f"chain cost per correction, {label}", cost, "ms"))
            target = not synced and threads == 1
            rows.append(row(f"chain overhead per correction, {label}", share * 100, "%",
                            f"<= {OVERHEAD_TARGET * 100:g}%" if target else None,
                            share <= OVERHEAD_TARGET if target else None))
        with engine.connect() as conn:
            length, size = conn.execute(text("""select count(*), pg_total_relation_size('reconciler.audit_log')
                                                from reconciler.audit_log""")).one()
        rows.append(row("audit rows written", float(length), "count"))
        rows.append(row("disk per audit row (table + indexes)", size / max(length, 1), "bytes"))
        started = time.perf_counter()
        with reading(engine) as conn:
            report = verify_chain(conn)
        elapsed = time.perf_counter() - started
        rows.append(row("audit verify speed", report.length / elapsed, "rows/s", "intact", report.intact))
    finally:
        engine.dispose()
        unsynced.dispose()
    return rows


__all__ = ["run"]
