"""Bench section ``locked``: a real run (with corrections) while a service holds two drifting customers locked.

On the demo ledger (2,000 customers and 1M, 20 entries each, drift rate 0.001) a second session holds
``FOR UPDATE`` on one drifting customer and ``FOR NO KEY UPDATE`` on another for the whole run. Measured, in
one invocation: the run with the locks held (it must succeed and list both as busy), then, locks released,
the rerun that corrects them. The issue's figure is the first one: a run that waited on the locks would take
at least the step lock timeout (30 s) or fail.
"""

from __future__ import annotations

import os
import time
from decimal import Decimal
from pathlib import Path
from tempfile import TemporaryDirectory

import psycopg
from sqlalchemy.engine import URL

from bench.engine import ENTRIES, SEED, libpq

SECTION = "locked"
DRIFT_RATE = Decimal("0.001")
LOCK_MODES = ("FOR UPDATE", "FOR NO KEY UPDATE")


def row(name: str, value: float | int | bool, unit: str, target: str | None = None,
        ok: bool | None = None) -> dict[str, object]:
    return {"section": SECTION, "name": name, "value": value, "unit": unit, "target": target, "ok": ok}


def sizes(quick: bool) -> tuple[int, ...]:
    configured = os.environ.get("BENCH_LOCKED_CUSTOMERS", "").strip()
    if configured:
        return tuple(int(part) for part in configured.split(","))
    return (2_000, 100_000) if quick else (2_000, 1_000_000)


def _seed(url: URL, customers: int) -> list[int]:
    """The demo ledger, reset; returns the drifting customers within the auto-correct limit, by id."""
    from reconciler import demo
    from reconciler.db import make_engine

    engine = make_engine(url)
    try:
        demo.seed(engine, demo.SeedOptions(customers=customers, entries_per_customer=ENTRIES, drift_rate=DRIFT_RATE,
                                           seed=SEED, reset=True))
    finally:
        engine.dispose()
    with psycopg.connect(libpq(url)) as conn:
        conn.execute("truncate reconciler.findings, reconciler.run_chunks, reconciler.quality_results, "
                     "reconciler.tasks, reconciler.runs restart identity cascade")
        conn.commit()
        rows = conn.execute("select customer_id from reconciler.demo_plants where abs(drift) <= 100 "
                            "order by customer_id limit 2").fetchall()
    return [int(r[0]) for r in rows]


def _run(url: URL) -> tuple[float, dict[str, object]]:
    from reconciler.db import make_engine
    from reconciler.pipeline import RunOptions, run_reconciliation

    engine = make_engine(url)
    try:
        with TemporaryDirectory(prefix="bench-report-") as reports:
            started = time.perf_counter()
            summary = run_reconciliation(engine, RunOptions(max_drift_ratio=1), trigger="manual",
                                         report_dir=Path(reports))
            return time.perf_counter() - started, summary.to_json()
    finally:
        engine.dispose()


def measure(url: URL, customers: int) -> list[dict[str, object]]:
    label = f"{customers:,}"
    locked = _seed(url, customers)
    with psycopg.connect(libpq(url), application_name="bench-locking-service") as holder:
        for customer_id, mode in zip(locked, LOCK_MODES, strict=True):
            holder.execute(f"select id from customers where id = %s {mode}", (customer_id,))
        seconds, summary = _run(url)
        holder.rollback()
    busy = sorted(int(item["customer_id"]) for item in summary["busy"])  # type: ignore[union-attr, index]
    print(f"  [locked] {label}: run with 2 locked customers {seconds:.2f} s, {summary['status']}, busy {busy}",
          flush=True)
    rerun, after = _run(url)
    print(f"  [locked] {label}: rerun after release {rerun:.2f} s, corrected {after['corrected']}", flush=True)
    return [
        row(f"run, 2 locked customers ({label})", round(seconds, 2), "s", "succeeds, both busy",
            summary["status"] == "succeeded" and busy == sorted(locked)),
        row(f"rerun after release corrects them ({label})", round(rerun, 2), "s", "corrected 2",
            after["corrected"] == 2 and after["busy"] == []),
    ]


def run(quick: bool, url: URL) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for customers in sizes(quick):
        rows += measure(url, customers)
    return rows
