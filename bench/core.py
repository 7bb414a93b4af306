"""Bench section ``core``: the balance core against a hand-written psycopg baseline, in the same run.

1. Throughput of one credit per operation at 1 and 8 threads on 1,000 customers:
   - ``raw``: one autocommit psycopg statement per operation, a CTE doing ``UPDATE customers ...
     RETURNING`` and the ``INSERT`` of the entry with its ``balance_after`` (no funds check, no real-time
     check, no idempotency, no retries: the floor of what any correct writer must do);
   - ``core``: ``BalanceManager.update_balance`` on an engine from ``reconciler.db.make_engine`` (the
     product's own settings, pool pre-ping included: one extra round trip per checkout), and again on
     the same engine settings without pre-ping.
   Rounds alternate raw and core so both see the same machine; the median round is reported.
   Target: core >= 0.7x raw at 8 threads (PostgreSQL defaults). The same comparison is repeated with
   ``synchronous_commit=off`` for both, where client CPU per operation decides (informational).
2. Reading one balance, for a customer with 1,000 entries (covering index, vacuumed):
   ``get_balance`` with the TTL cache on, without it, and ``SELECT SUM(amount)`` over the entries through
   the same engine; plus the raw psycopg primary-key read and SUM on one open connection.
   Target: cached ``get_balance`` >= 20x faster than the SUM.
"""

from __future__ import annotations

import contextlib
import random
import statistics
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL

from reconciler.balances import _FAST_CHANGE, BalanceManager
from reconciler.db import make_engine

SECTION = "core"
CUSTOMERS = 1_000
HISTORY_CUSTOMER = CUSTOMERS + 1
HISTORY_ENTRIES = 1_000
THROUGHPUT_TARGET = 0.8
CACHE_TARGET = 100.0
#: Uncached get_balance against the raw psycopg primary-key read (ratio of speeds) and against the SUM.
UNCACHED_VS_RAW_TARGET = 0.7
UNCACHED_VS_SUM_TARGET = 3.0

RAW_CREDIT = """
WITH changed AS (
    UPDATE customers SET balance = balance + %(amount)s, updated_at = now()
    WHERE id = %(customer_id)s
    RETURNING id, balance
)
INSERT INTO customer_ledger_entries (customer_id, amount, kind, balance_after)
SELECT id, %(amount)s, 'bench_raw', balance FROM changed
RETURNING id
"""

AMOUNT = Decimal("1.00")


def libpq(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def seed_database(engine_url: URL) -> None:
    """:func:`seed` the section's database at ``engine_url`` on an engine of its own."""
    engine = make_engine(engine_url)
    try:
        seed(engine)
    finally:
        engine.dispose()


def seed(engine: Engine) -> None:
    """1,000 customers whose balance agrees with one opening entry each, and one customer with 1,000 entries."""
    with engine.begin() as conn:
        conn.execute(text("""
            insert into customers (id, balance, updated_at)
            select g, 1000000.00, now() from generate_series(1, :n) g"""), {"n": CUSTOMERS})
        conn.execute(text("""
            insert into customer_ledger_entries (customer_id, amount, kind, balance_after)
            select g, 1000000.00, 'opening', 1000000.00 from generate_series(1, :n) g"""), {"n": CUSTOMERS})
        conn.execute(text("insert into customers (id, balance, updated_at) values (:c, :b, now())"),
                     {"c": HISTORY_CUSTOMER, "b": Decimal(HISTORY_ENTRIES * (HISTORY_ENTRIES + 1) // 2)})
        conn.execute(text("""
            insert into customer_ledger_entries (customer_id, amount, kind, balance_after)
            select :c, g, 'history', g * (g + 1) / 2 from generate_series(1, :m) g"""),
                     {"c": HISTORY_CUSTOMER, "m": HISTORY_ENTRIES})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("vacuum analyze customers"))
        conn.execute(text("vacuum analyze customer_ledger_entries"))


def measure_threads(threads: int, seconds: float, make_worker: Callable[[int], Callable[[random.Random], None]]
                    ) -> float:
    """Operations per second of ``threads`` workers started together and stopped after ``seconds``."""
    stop = threading.Event()
    barrier = threading.Barrier(threads + 1)
    counts = [0] * threads
    errors: list[BaseException] = []

    def run(index: int) -> None:
        operate = make_worker(index)
        rnd = random.Random(index)
        barrier.wait()
        done = 0
        try:
            while not stop.is_set():
                operate(rnd)
                done += 1
        except BaseException as exc:
            errors.append(exc)
        counts[index] = done

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    started = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return sum(counts) / elapsed


def raw_worker(dsn: str, opened: list[psycopg.Connection[Any]]) -> Callable[[int], Callable[[random.Random], None]]:
    def make(_: int) -> Callable[[random.Random], None]:
        conn = psycopg.connect(dsn, autocommit=True)
        opened.append(conn)

        def operate(rnd: random.Random) -> None:
            conn.execute(RAW_CREDIT, {"amount": AMOUNT, "customer_id": rnd.randint(1, CUSTOMERS)}).fetchone()
        return operate
    return make


def statement_worker(dsn: str, opened: list[psycopg.Connection[Any]], sql: str
                     ) -> Callable[[int], Callable[[random.Random], None]]:
    """The core's one-statement fast path alone, on a held connection: what the database side costs."""
    def make(_: int) -> Callable[[random.Random], None]:
        conn = psycopg.connect(dsn, autocommit=True)
        opened.append(conn)
        cursor = conn.cursor()

        def operate(rnd: random.Random) -> None:
            cursor.execute(sql, {"customer_id": rnd.randint(1, CUSTOMERS), "amount": AMOUNT, "kind": "bench_stmt",
                                 "reference": None, "idempotency_key": None, "allow_negative": True}).fetchone()
        return operate
    return make


def core_worker(manager: BalanceManager, *, pinned: bool = False,
                held: list[contextlib.ExitStack] | None = None) -> Callable[[int], Callable[[random.Random], None]]:
    def make(_: int) -> Callable[[random.Random], None]:
        mine = manager
        if pinned:
            assert held is not None
            stack = contextlib.ExitStack()
            held.append(stack)
            mine = stack.enter_context(manager.pinned())

        def operate(rnd: random.Random) -> None:
            mine.update_balance(rnd.randint(1, CUSTOMERS), AMOUNT, kind="payment")
        return operate
    return make


def throughput(url: URL, quick: bool, *, thread_counts: tuple[int, ...] = (1, 8), setting: str = "",
               target: bool = True) -> list[dict[str, object]]:
    """Raw against core at each thread count; ``setting`` labels a server setting in force."""
    seconds = 2.0 if quick else 5.0
    rounds = 1 if quick else 3
    suffix = f", {setting}" if setting else ""
    rows: list[dict[str, object]] = []
    for threads in thread_counts:
        default = make_engine(url, pool_size=threads + 2)
        pre_ping = make_engine(url, pool_size=threads + 2, pool_pre_ping=True)
        managers = {"make_engine defaults": BalanceManager(default),
                    "make_engine(pool_pre_ping=True), the old default": BalanceManager(pre_ping),
                    "pinned(), one connection per thread": BalanceManager(default)}
        results: dict[str, list[float]] = {"raw": [], "statement": [], **{name: [] for name in managers}}
        opened: list[psycopg.Connection[Any]] = []
        held: list[contextlib.ExitStack] = []
        fast_sql = str(_FAST_CHANGE.compile(dialect=default.dialect))

        try:
            for name in managers:  # warm the pools and the prepared statements
                warm = core_worker(managers[name], pinned=name.startswith("pinned"), held=held)
                measure_threads(threads, 0.5, warm)
                release(held)
            for _ in range(rounds):
                results["raw"].append(measure_threads(threads, seconds, raw_worker(libpq(url), opened)))
                close_all(opened)
                results["statement"].append(
                    measure_threads(threads, seconds, statement_worker(libpq(url), opened, fast_sql)))
                close_all(opened)
                for name in managers:
                    worker = core_worker(managers[name], pinned=name.startswith("pinned"), held=held)
                    results[name].append(measure_threads(threads, seconds, worker))
                    release(held)
        finally:
            release(held)
            close_all(opened)
            default.dispose()
            pre_ping.dispose()
        raw = statistics.median(results["raw"])
        statement = statistics.median(results["statement"])
        rows += [
            row(f"raw single-statement CTE, {threads} thread(s){suffix}", raw, "ops/s"),
            row(f"core's guarded statement alone, held connection / raw, {threads} thread(s){suffix}",
                statement / raw, "x"),
        ]
        judged = target and threads == 8
        for label, manager in managers.items():
            ops = statistics.median(results[label])
            ratio = ops / raw
            rows += [
                row(f"core update_balance ({label}), {threads} thread(s){suffix}", ops, "ops/s"),
                row(f"core / raw ({label}), {threads} thread(s){suffix}", ratio, "x",
                    f">= {THROUGHPUT_TARGET}x raw" if judged else None, ratio >= THROUGHPUT_TARGET if judged else None),
                row(f"core changes that took the locked path ({label}), {threads} thread(s){suffix}",
                    manager.stats()["locked_path"], "count"),
            ]
    return rows


def close_all(opened: list[psycopg.Connection[Any]]) -> None:
    while opened:
        opened.pop().close()


def release(held: list[contextlib.ExitStack]) -> None:
    """Return the pinned connections of the last measurement to the pool."""
    while held:
        held.pop().close()


def cpu_bound_throughput(url: URL, quick: bool) -> list[dict[str, object]]:
    """The same comparison at 8 threads with commits not waiting for the disk (synchronous_commit=off for
    both): client CPU per operation decides it, the hardest case for the core. Informational."""
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        conn.execute(sql.SQL("alter database {} set synchronous_commit = off").format(
            sql.Identifier(url.database or "")))
    try:
        return throughput(url, quick, thread_counts=(8,), setting="synchronous_commit=off", target=False)
    finally:
        with psycopg.connect(libpq(url), autocommit=True) as conn:
            conn.execute(sql.SQL("alter database {} reset synchronous_commit").format(
                sql.Identifier(url.database or "")))


def per_call_ms(calls: int, operation: Callable[[], object]) -> float:
    for _ in range(min(200, calls)):
        operation()
    started = time.perf_counter()
    for _ in range(calls):
        operation()
    return (time.perf_counter() - started) / calls * 1000


def reads(url: URL, quick: bool) -> list[dict[str, object]]:
    calls = 2_000 if quick else 10_000
    with psycopg.connect(libpq(url), autocommit=True) as conn:  # steady state after the write runs
        conn.execute("vacuum analyze customer_ledger_entries")
    engine = make_engine(url)  # make_engine defaults: the pool has room for each manager's kept connection
    cached = BalanceManager(engine, cache_ttl=3600)
    uncached = BalanceManager(engine)
    sum_sql = text("select coalesce(sum(amount), 0) from customer_ledger_entries where customer_id = :c")

    def sum_through_engine() -> object:
        with engine.connect() as conn:
            return conn.execute(sum_sql, {"c": HISTORY_CUSTOMER}).scalar_one()

    raw = psycopg.connect(libpq(url), autocommit=True)
    measures: dict[str, Callable[[], object]] = {
        "cached": lambda: cached.get_balance(HISTORY_CUSTOMER),
        "uncached": lambda: uncached.get_balance(HISTORY_CUSTOMER),
        "sum": sum_through_engine,
        "raw_pk": lambda: raw.execute("select balance from customers where id = %s", (HISTORY_CUSTOMER,)).fetchone(),
        "raw_sum": lambda: raw.execute("select sum(amount) from customer_ledger_entries where customer_id = %s",
                                       (HISTORY_CUSTOMER,)).fetchone(),
    }
    rounds: dict[str, list[float]] = {name: [] for name in measures}
    try:
        assert cached.get_balance(HISTORY_CUSTOMER) == sum_through_engine()
        for _ in range(1 if quick else 3):  # rounds alternate every measure, the median round is kept
            for name, operation in measures.items():
                rounds[name].append(per_call_ms(calls * (10 if name == "cached" else 1), operation))
        plan = "\n".join(r[0] for r in raw.execute(
            "explain (analyze, costs off) select sum(amount) from customer_ledger_entries where customer_id = %s",
            (HISTORY_CUSTOMER,)))
    finally:
        raw.close()
        engine.dispose()
    timings = {name: statistics.median(values) for name, values in rounds.items()}
    speedup = timings["sum"] / timings["cached"]
    uncached_vs_raw = timings["raw_pk"] / timings["uncached"]
    uncached_vs_sum = timings["sum"] / timings["uncached"]
    index_only = "Index Only Scan" in plan
    return [
        row("get_balance, TTL cache on", timings["cached"], "ms"),
        row("get_balance, uncached (pooled connection, primary-key read)", timings["uncached"], "ms"),
        row(f"SELECT SUM(amount), {HISTORY_ENTRIES} entries (same engine)", timings["sum"], "ms"),
        row("cached get_balance speed-up over the SUM", speedup, "x", f">= {CACHE_TARGET:g}x",
            speedup >= CACHE_TARGET),
        row("raw psycopg primary-key read (open connection)", timings["raw_pk"], "ms"),
        row("uncached get_balance speed / raw psycopg primary-key read", uncached_vs_raw, "x",
            f">= {UNCACHED_VS_RAW_TARGET:g}x", uncached_vs_raw >= UNCACHED_VS_RAW_TARGET),
        row(f"uncached get_balance speed-up over the SUM of {HISTORY_ENTRIES} entries", uncached_vs_sum, "x",
            f">= {UNCACHED_VS_SUM_TARGET:g}x", uncached_vs_sum >= UNCACHED_VS_SUM_TARGET),
        row(f"raw psycopg SUM, {HISTORY_ENTRIES} entries (open connection)", timings["raw_sum"], "ms"),
        row("SUM uses an index-only scan on the covering index", 1.0 if index_only else 0.0, "bool",
            "index-only", index_only),
    ]


def row(name: str, value: float, unit: str, target: str | None = None, ok: bool | None = None) -> dict[str, object]:
    return {"section": SECTION, "name": name, "value": round(value, 4), "unit": unit, "target": target, "ok": ok}


def run(quick: bool, engine_url: URL) -> list[dict[str, object]]:
    """Run the section on ``engine_url`` (a freshly migrated database of its own) and return its rows."""
    seed_database(engine_url)
    return throughput(engine_url, quick) + cpu_bound_throughput(engine_url, quick) + reads(engine_url, quick)
