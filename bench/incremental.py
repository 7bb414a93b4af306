"""Bench section ``incremental``: an incremental run's cost against a full run's, side by side in one invocation.

1,000,000 customers x 20 entries (quick: 100,000), loaded by the product's ``demo seed`` (COPY), the guard
observing (so the change feed is on), a first full dry run that sets the verified point; then 1% of the
customers are touched, half through the balance core (``update_balance`` on 2 threads) and half around it
(one transaction adding an entry and the same amount to the balance, so they stay clean), and a few of the
touched ones are made to drift. Then, on the same data, ``run --incremental --dry-run`` and
``run --full --dry-run`` (``run_reconciliation``, chunks of 10,000 on 2 workers, quality, tasks, report),
each timed whole and for its comparison step (from the first chunk started to the last one compared).
Targets: incremental <= 0.1x full; its comparison <= 0.03x the full comparison. Both ``customers_checked``
are reported, and the incremental findings must equal the full run's among the customers it checked.

Last, the feed's own cost on the core: ``update_balance`` at 8 threads (pinned connections) with the guard
observing, with and without the feed's triggers, rounds alternating; the median round of each is reported.
"""

from __future__ import annotations

import random
import tempfile
import threading
import time
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.engine import URL

from bench import step_timer

SECTION = "incremental"
ENTRIES = 20
WORKERS = 2
CHUNK_SIZE = 10_000
TOUCHED_SHARE = 100  # 1 customer in 100
PLANTED = 25
TOTAL_TARGET = 0.1
COMPARE_TARGET = 0.03


def row(name: str, value: float | int | bool, unit: str, target: str | None = None,
        ok: bool | None = None) -> dict[str, object]:
    return {"section": SECTION, "name": name, "value": value, "unit": unit, "target": target, "ok": ok}


def log(message: str) -> None:
    print(f"  [incremental] {message}", flush=True)


def timed_run(engine: Engine, mode: str) -> dict[str, Any]:
    """One dry run in ``mode``: total seconds, comparison seconds, customers checked, findings, step times."""
    from bench.step_timer import timed_steps
    from reconciler.pipeline import RunOptions, run_reconciliation

    steps = timed_steps()
    marks: list[float] = []

    def progress(done: int, total: int, _customers: int) -> None:
        if done == 0 or done == total:
            marks.append(time.perf_counter())

    with tempfile.TemporaryDirectory(prefix="bench-report-") as reports:
        started = time.perf_counter()
        summary = run_reconciliation(engine, RunOptions(mode=mode, dry_run=True, workers=WORKERS,
                                                        chunk_size=CHUNK_SIZE, max_drift_ratio=Decimal(1)),
                                     trigger="manual", progress=progress, report_dir=Path(reports))
        seconds = time.perf_counter() - started
    with engine.connect() as conn:
        found = set(conn.execute(text("select customer_id from reconciler.findings where run_id = :r"),
                                 {"r": summary.run_id}).scalars())
        checked = set(conn.execute(text("""select unnest(customer_ids) from reconciler.run_chunks
                                           where run_id = :r"""), {"r": summary.run_id}).scalars())
    return {"seconds": seconds, "compare": (marks[-1] - marks[0]) if len(marks) >= 2 else 0.0,
            "customers": summary.customers_checked, "mode": summary.mode, "reason": summary.mode_reason,
            "found": found, "checked": checked, "steps": dict(steps)}


def statements_alone(engine: Engine, ids: list[int], rounds: int) -> tuple[float, float]:
    """The floor of each comparison: the run's own comparison statement (reconciler.compare) with no bookkeeping,
    split over WORKERS connections, over the touched ids and over every customer (halves of the id range),
    rounds alternating; the best seconds of each."""
    from concurrent.futures import ThreadPoolExecutor

    from reconciler.chunks import Chunk
    from reconciler.compare import compare_chunk_totals
    from reconciler.money import DEFAULT_TOLERANCE

    with engine.connect() as conn:
        low, high = conn.execute(text("select min(id), max(id) from customers")).one()
    ordered = sorted(ids)
    touched = [(Chunk(i, part[0], part[-1], len(part)), part)
               for i, part in enumerate(ordered[k::WORKERS] for k in range(WORKERS)) if part]
    middle = (int(low) + int(high)) // 2
    everyone = [(Chunk(0, int(low), middle, 0), None), (Chunk(1, middle + 1, int(high), 0), None)]

    def timed(parts: Sequence[tuple[Chunk, list[int] | None]]) -> float:
        def one(part: tuple[Chunk, list[int] | None]) -> None:
            chunk, customer_ids = part
            with engine.connect() as conn, conn.begin():
                compare_chunk_totals(conn, chunk, DEFAULT_TOLERANCE,
                                     customer_ids=sorted(customer_ids) if customer_ids is not None else None)
        started = time.perf_counter()
        with ThreadPoolExecutor(WORKERS) as pool:
            list(pool.map(one, parts))
        return time.perf_counter() - started

    best_touched = best_all = float("inf")
    for _ in range(rounds):
        best_touched = min(best_touched, timed(touched))
        best_all = min(best_all, timed(everyone))
    return best_touched, best_all


def touch(engine: Engine, customers: int) -> tuple[int, list[int]]:
    """Touch 1% of the customers (half through the core, half around it, all clean) and plant a few drifts
    among them; returns (touched, planted ids)."""
    from reconciler.balances import BalanceManager

    rnd = random.Random(11)
    ids = rnd.sample(range(1, customers + 1), customers // TOUCHED_SHARE)
    through_core, around = ids[: len(ids) // 2], ids[len(ids) // 2:]
    manager = BalanceManager(engine)

    def work(part: list[int]) -> None:
        for customer_id in part:
            manager.update_balance(customer_id, Decimal("1.00"), kind="deposit")

    threads = [threading.Thread(target=work, args=(through_core[i::2],)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    planted = around[:PLANTED]
    with engine.begin() as conn:
        conn.execute(text("select set_config('application_name', 'bench-legacy-billing', true)"))
        conn.execute(text("""insert into customer_ledger_entries (customer_id, amount, kind)
                             select unnest(cast(:ids as bigint[])), 2.00, 'legacy'"""), {"ids": around})
        conn.execute(text("""update customers set balance = balance + case when id = any(cast(:planted as bigint[]))
                                                                     then 7.00 else 2.00 end
                             where id = any(cast(:ids as bigint[]))"""), {"ids": around, "planted": planted})
    return len(ids), planted


FEED_THREADS = 8


def feed_cost(engine: Engine, quick: bool) -> list[dict[str, object]]:
    """Core throughput with the guard observing, with and without the change feed's triggers."""
    import contextlib
    import statistics

    from bench.core import core_worker, measure_threads, release
    from reconciler import change_feed
    from reconciler.balances import BalanceManager
    from reconciler.guard import install, ledger_tables

    manager = BalanceManager(engine)
    with engine.connect() as conn:
        tables = ledger_tables(conn)
    drop = "\n".join(f"drop trigger if exists {name} on {tables.customers if role == 'customers' else tables.entries};"
                     for role, name, _, _, _ in change_feed.FEED_TRIGGERS)
    results: dict[str, list[float]] = {"with": [], "without": []}
    held: list[contextlib.ExitStack] = []
    seconds = 1.5 if quick else 4.0
    try:
        for _ in range(2 if quick else 4):
            for variant in ("with", "without"):
                install(engine, "observe")
                if variant == "without":
                    with engine.begin() as conn:
                        conn.execute(text(drop))
                results[variant].append(measure_threads(FEED_THREADS, seconds,
                                                        core_worker(manager, pinned=True, held=held)))
                release(held)
    finally:
        release(held)
        install(engine, "observe")
    with_feed, without = statistics.median(results["with"]), statistics.median(results["without"])
    label = f"core update_balance, {FEED_THREADS} threads, guard observe"
    return [row(f"{label} without the feed", round(without), "ops/s"),
            row(f"{label} with the feed", round(with_feed), "ops/s"),
            row("core with feed / without feed", round(with_feed / without, 4), "x")]


def run(quick: bool, engine_url: URL) -> list[dict[str, object]]:
    """Run the section on ``engine_url`` (a freshly migrated database of its own) and return its rows."""
    from reconciler.quality import import_great_expectations

    import_great_expectations()  # imported once up front (as the product does), so neither run pays for it

    from reconciler import demo
    from reconciler.db import make_engine
    from reconciler.guard import install

    customers = 100_000 if quick else 1_000_000
    engine = make_engine(engine_url, pool_size=WORKERS + 4)
    try:
        log(f"seeding {customers:,} customers x {ENTRIES} entries")
        demo.seed(engine, demo.SeedOptions(customers=customers, entries_per_customer=ENTRIES,
                                           drift_rate=Decimal("0"), seed=42, reset=True))
        install(engine, "observe")
        log("first full run (sets the verified point)")
        timed_run(engine, "full")
        touched, planted = touch(engine, customers)
        with engine.connect() as conn:
            feed_rows = int(conn.execute(text("select count(*) from reconciler.change_feed")).scalar_one())
        log(f"touched {touched:,} customers ({feed_rows:,} feed rows); incremental, then full")
        incremental = timed_run(engine, "incremental")
        full = timed_run(engine, "full")
        log("the comparison statements alone (the floor)")
        floor_touched, floor_all = statements_alone(engine, sorted(incremental["checked"]), 2 if quick else 3)
        log("the feed's cost on the core's throughput")
        costs = feed_cost(engine, quick)
    finally:
        engine.dispose()
    total_ratio = incremental["seconds"] / full["seconds"]
    compare_ratio = incremental["compare"] / full["compare"] if full["compare"] else 0.0
    agree = incremental["found"] == {c for c in full["found"] if c in incremental["checked"]} \
        and set(planted) <= incremental["found"]
    size = f"{customers // 1000:,}k x {ENTRIES}"
    return [
        row(f"customers touched (1%), {size}", touched, "count"),
        row("change feed rows for them (once per customer per transaction)", feed_rows, "count",
            f"= {touched}", feed_rows == touched),
        row("run --full --dry-run", round(full["seconds"], 2), "s"),
        row("run --incremental --dry-run", round(incremental["seconds"], 2), "s"),
        row("incremental / full, whole run", round(total_ratio, 4), "x", f"<= {TOTAL_TARGET}x",
            total_ratio <= TOTAL_TARGET),
        row("full comparison step", round(full["compare"], 3), "s"),
        row("incremental comparison step", round(incremental["compare"], 4), "s"),
        row("incremental / full, comparison step", round(compare_ratio, 4), "x", f"<= {COMPARE_TARGET}x",
            compare_ratio <= COMPARE_TARGET),
        row("customers_checked, full", full["customers"], "count"),
        row("customers_checked, incremental", incremental["customers"], "count"),
        row("incremental ran incremental", incremental["mode"] == "incremental", "bool", "yes",
            incremental["mode"] == "incremental"),
        row("incremental findings = full findings among the checked (planted drifts found)", agree, "bool",
            "yes", agree),
        *[row(f"step {step.strip('_')}, {mode}", round(run_["steps"].get(step, 0.0), 3), "s")
          for step in step_timer.STEPS for mode, run_ in (("incremental", incremental), ("full", full))],
        row("floor: the comparison statement alone over the touched ids, "
            f"{WORKERS} connections", round(floor_touched, 4), "s"),
        row(f"floor: the comparison statement alone over every customer, {WORKERS} connections",
            round(floor_all, 3), "s"),
        row("floor: touched / every customer, statements alone", round(floor_touched / floor_all, 4), "x"),
        *costs,
    ]
