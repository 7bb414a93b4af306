"""Bench section ``audit``: what the hash-chained audit trail costs per correction.

Each correction (``BalanceManager.reconcile_balance``, policy ``ledger``, on a customer drifting by 1.00)
appends one ``correction`` row to ``reconciler.audit_log`` in the core's transaction, under the chain's
lock (the head row, held until commit). Measured against the same corrections with the append switched
off (the core's ``append_audit`` replaced by a no-op), in alternating rounds on fresh customers so both see
the same machine; median round reported:

- at 1 thread: the latency a correction pays for its audit row (one more round trip and the SHA-256 in
  PostgreSQL);
- at 4 threads: corrections of different customers now serialise on the chain's lock from the append to the
  commit, so this is where contention would show.

Plus the size of one audit row on disk and how fast ``audit verify`` recomputes the chain.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.engine import URL

import reconciler.balances.manager as core_manager
from reconciler.audit import verify_chain
from reconciler.balances import BalanceManager
from reconciler.db import make_engine, reading

SECTION = "audit"
#: Target: the chain adds at most this share to a correction's latency at 1 thread.
OVERHEAD_TARGET = 0.5


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


@contextmanager
def chain_switched(on: bool) -> Iterator[None]:
    """The core's audit append as it is (``on``) or replaced by a no-op."""
    original = core_manager.append_audit
    if not on:
        core_manager.append_audit = lambda conn, event: None  # type: ignore[assignment]
    try:
        yield
    finally:
        core_manager.append_audit = original  # type: ignore[assignment]


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
            rounds: int) -> dict[bool, float]:
    """Median corrections per second with the chain on and off, rounds alternating."""
    rates: dict[bool, list[float]] = {True: [], False: []}
    for round_index in range(rounds):
        for on in ((True, False) if round_index % 2 == 0 else (False, True)):
            with chain_switched(on):
                elapsed = correct_all(engine, next_customers(per_round), threads)
            rates[on].append(per_round / elapsed)
    return {on: statistics.median(values) for on, values in rates.items()}


def run(quick: bool, engine_url: URL) -> list[dict[str, object]]:
    """Run the section on ``engine_url`` (a freshly migrated database of its own) and return its rows."""
    per_round = 300 if quick else 1_000
    rounds = 3 if quick else 5
    plan = [(1, per_round), (4, per_round)]
    total = sum(2 * rounds * n for _, n in plan)
    engine = make_engine(engine_url, pool_size=8)
    rows: list[dict[str, object]] = []
    try:
        seed(engine, total)
        pool: Iterator[int] = iter(range(1, total + 1))

        def take(n: int) -> list[int]:
            return [next(pool) for _ in range(n)]

        for threads, n in plan:
            rates = compare(engine, take, threads, n, rounds)
            with_ms, without_ms = 1000 / rates[True], 1000 / rates[False]
            label = f"{threads} thread{'s' if threads > 1 else ''}"
            rows.append(row(f"corrections/s with the audit chain, {label}", rates[True], "corrections/s"))
            rows.append(row(f"corrections/s without it, {label}", rates[False], "corrections/s"))
            if threads == 1:
                cost = with_ms - without_ms
                share = cost / without_ms
                rows.append(row("chain cost per correction, 1 thread (latency added)", cost, "ms"))
                rows.append(row("chain overhead per correction, 1 thread", share * 100, "%",
                                f"<= {OVERHEAD_TARGET * 100:g}%", share <= OVERHEAD_TARGET))
            else:
                rows.append(row(f"chain cost per correction, {label} (wall time per correction added)",
                                (1000 / rates[True]) - (1000 / rates[False]), "ms"))
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
    return rows


__all__: list[Any] = ["run"]
