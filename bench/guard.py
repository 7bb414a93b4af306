"""Bench section ``guard``: what the guard costs, side by side in one run.

1. Core throughput at 8 threads (``BalanceManager.update_balance``, one pinned connection per thread, the
   core's best case, so the guard's share is the largest it can be) with the guard off, in observe and in
   enforce. Rounds rotate off / observe / enforce so each mode sees the same machine; the median round is
   reported (the order is reversed every other rotation, so no mode always runs after another). Target: observe
   and enforce each >= 0.9x off. The core's statements set their mark and the
   capture triggers' WHEN skips them; the change feed of incremental runs (``reconciler/change_feed.py``,
   installed with the guard) does see them: its statement triggers write one row per customer per
   transaction, and that cost is inside the observe and enforce figures (the feed rows written are counted).
2. A bypass UPDATE's own cost (``UPDATE customers SET balance = balance + 1 WHERE id = $1``, autocommit, one
   open connection) with the guard off and in observe, where each one is recorded, fingerprinted and checked
   at commit (breaking the ledger, so its task is opened or updated too). Target: observe <= 2x off.
"""

from __future__ import annotations

import contextlib
import random
import statistics
import time
from decimal import Decimal
from typing import Any

import psycopg
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL

from bench.core import CUSTOMERS, core_worker, libpq, measure_threads, release, seed_database
from reconciler.balances import BalanceManager
from reconciler.db import make_engine
from reconciler.guard import install, uninstall

SECTION = "guard"
THREADS = 8
THROUGHPUT_TARGET = 0.9
BYPASS_TARGET = 2.0
BYPASS = "update customers set balance = balance + %s where id = %s"


def row(name: str, value: float, unit: str, target: str | None = None, ok: bool | None = None) -> dict[str, object]:
    return {"section": SECTION, "name": name, "value": round(value, 4), "unit": unit, "target": target, "ok": ok}


def set_mode(engine: Engine, mode: str) -> None:
    if mode == "off":
        uninstall(engine)
    else:
        install(engine, mode)


def core_throughput(url: URL, quick: bool, seconds: float | None = None,
                    rounds: int | None = None) -> list[dict[str, object]]:
    seconds = seconds if seconds is not None else (1.5 if quick else 5.0)
    rounds = rounds if rounds is not None else (4 if quick else 6)  # rotations (even: each order as often)
    engine = make_engine(url, pool_size=THREADS + 2)
    manager = BalanceManager(engine)
    modes = ("off", "observe", "enforce")
    results: dict[str, list[float]] = {mode: [] for mode in modes}
    held: list[contextlib.ExitStack] = []
    try:
        measure_threads(THREADS, 0.5, core_worker(manager, pinned=True, held=held))  # warm up
        release(held)
        for number in range(rounds):
            # The order is reversed every other rotation (off, observe, enforce, enforce, observe, off, ...): a
            # drift of the machine during the run (checkpoints, autovacuum, other tenants) is not paid by one mode.
            for mode in modes if number % 2 == 0 else modes[::-1]:
                set_mode(engine, mode)
                results[mode].append(measure_threads(THREADS, seconds, core_worker(manager, pinned=True, held=held)))
                release(held)
        with engine.connect() as conn:
            false_rows = int(conn.execute(text("select count(*) from reconciler.bypass_writes")).scalar_one())
            feed_rows = int(conn.execute(text("select count(*) from reconciler.change_feed")).scalar_one())
    finally:
        release(held)
        uninstall(engine)
        engine.dispose()
    off = statistics.median(results["off"])
    rows = [row(f"core update_balance, {THREADS} threads, guard off", off, "ops/s")]
    for mode in ("observe", "enforce"):
        ops = statistics.median(results[mode])
        ratio = ops / off
        rows += [row(f"core update_balance, {THREADS} threads, guard {mode}", ops, "ops/s"),
                 row(f"core {mode} / off, {THREADS} threads", ratio, "x", f">= {THROUGHPUT_TARGET}x off",
                     ratio >= THROUGHPUT_TARGET)]
    rows.append(row("bypass rows recorded for the core's own writes", false_rows, "count", "0", false_rows == 0))
    rows.append(row("change feed rows written by the core's writes in observe and enforce (feed cost included)",
                    feed_rows, "count", "> 0", feed_rows > 0))
    return rows


def bypass_cost(url: URL, quick: bool, calls: int | None = None) -> list[dict[str, object]]:
    calls = calls if calls is not None else (300 if quick else 1_700)  # full: 12,000 observed, as before
    engine = make_engine(url, pool_size=2)
    rnd = random.Random(7)
    timings: dict[str, list[float]] = {"off": [], "observe": []}

    def per_call_ms(conn: psycopg.Connection[Any]) -> float:
        started = time.perf_counter()
        for _ in range(calls):
            conn.execute(BYPASS, (Decimal("1.00"), rnd.randint(1, CUSTOMERS)))
        return (time.perf_counter() - started) / calls * 1000

    try:
        with psycopg.connect(libpq(url), autocommit=True, application_name="bench-bypass") as conn:
            for number in range(4 if quick else 6):
                for mode in ("off", "observe") if number % 2 == 0 else ("observe", "off"):
                    set_mode(engine, mode)
                    if not timings[mode]:
                        per_call_ms(conn)  # warm the plan and the caches once per mode
                    timings[mode].append(per_call_ms(conn))
        with engine.connect() as conn:
            recorded = int(conn.execute(text("select count(*) from reconciler.bypass_writes "
                                             "where application_name = 'bench-bypass'")).scalar_one())
    finally:
        uninstall(engine)
        engine.dispose()
    off, observe = statistics.median(timings["off"]), statistics.median(timings["observe"])
    ratio = observe / off
    return [
        row("bypass UPDATE of a balance, guard off", off, "ms"),
        row("bypass UPDATE of a balance, guard observe (recorded, checked at commit, task updated)", observe, "ms"),
        row("bypass UPDATE observe / off", ratio, "x", f"<= {BYPASS_TARGET}x off", ratio <= BYPASS_TARGET),
        row("bypass UPDATEs recorded in observe", recorded, "count"),
    ]


def run(quick: bool, engine_url: URL) -> list[dict[str, object]]:
    """Run the section on ``engine_url`` (a freshly migrated database of its own) and return its rows."""
    seed_database(engine_url)
    return core_throughput(engine_url, quick) + bypass_cost(engine_url, quick)
