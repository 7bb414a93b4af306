"""Bench section ``engine``: the reconciliation read path at 1,000,000 customers x 20 entries.

In ONE run, on data loaded by the product's own ``demo seed`` code (binary COPY), for two sizes
(full: 100k and 1M customers; quick: 10k and 100k; ``BENCH_ENGINE_CUSTOMERS=100000,1000000`` and
``BENCH_ENGINE_ENTRIES=20`` override them):

(a) the reconciliation dry run, ``run_reconciliation(engine, RunOptions(dry_run=True))`` (chunks of
    10,000 on 2 worker connections, then quality, tasks, report), in a subprocess whose peak RSS
    (``VmHWM``) is read; and, in another subprocess, the engine's own part alone: chunk planning,
    ``compare_chunk`` and ``explain_drifts`` on 2 threads;
(b) the limit: one hand-written SQL statement computing every drift with the covering index
    (best of 3, one psycopg connection);
(c) the naive way: one ``SELECT SUM`` per customer (prepared, on one connection) over a random sample,
    extrapolated to every customer.

Targets: (a) <= 1.5x (b) at the larger size; (a) grows <= 12x from the smaller size to the larger
(10x the data); peak RSS of (a) <= 300 MB at both sizes and flat (larger <= 1.3x smaller).
Every measurement also checks that it found exactly the planted drifts.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import URL, make_url

SECTION = "engine"
ENTRIES = 20
DRIFT_RATE = Decimal("0.001")
SEED = 42
WORKERS = 2
CHUNK_SIZE = 10_000
NAIVE_SAMPLE = 5_000
RATIO_TARGET = 1.5
GROWTH_TARGET = 12.0
RSS_TARGET_MB = 300.0
RSS_FLAT_TARGET = 1.3
ROOT = Path(__file__).resolve().parent.parent
URL_ENV = "RECONCILER_DATABASE_URL"

HAND_WRITTEN = """
select c.id, c.balance, coalesce(s.ledger_sum, 0) as ledger_sum, c.balance - coalesce(s.ledger_sum, 0) as drift
from customers c
left join (select customer_id, sum(amount) as ledger_sum
           from customer_ledger_entries group by customer_id) s on s.customer_id = c.id
where abs(c.balance - coalesce(s.ledger_sum, 0)) > 0.01
order by c.id
"""
NAIVE = "select coalesce(sum(amount), 0) from customer_ledger_entries where customer_id = %s"


def row(name: str, value: float | int | bool, unit: str, target: str | None = None,
        ok: bool | None = None) -> dict[str, object]:
    return {"section": SECTION, "name": name, "value": value, "unit": unit, "target": target, "ok": ok}


def libpq(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def sizes(quick: bool) -> tuple[int, int]:
    configured = os.environ.get("BENCH_ENGINE_CUSTOMERS", "").strip()
    if configured:
        small, large = (int(part) for part in configured.split(","))
        return small, large
    return (10_000, 100_000) if quick else (100_000, 1_000_000)


def log(message: str) -> None:
    print(f"  [engine] {message}", flush=True)


# ---- children: measured in their own process so their peak RSS is theirs alone --------------------------

def child_pipeline() -> dict[str, object]:
    """(a): the dry run through the pipeline."""
    from reconciler.db import make_engine
    from reconciler.pipeline import RunOptions, run_reconciliation

    engine = make_engine(os.environ[URL_ENV], pool_size=WORKERS + 2)
    with tempfile.TemporaryDirectory(prefix="bench-report-") as reports:
        started = time.perf_counter()
        summary = run_reconciliation(engine, RunOptions(dry_run=True, workers=WORKERS, chunk_size=CHUNK_SIZE),
                                     trigger="manual", report_dir=Path(reports))
        seconds = time.perf_counter() - started
    engine.dispose()
    return {"seconds": seconds, "drifts": summary.drift_count, "customers": summary.customers_checked,
            "status": summary.status}


def child_engine() -> dict[str, object]:
    """(a'): the engine's own part: plan, compare every chunk and explain, on WORKERS threads."""
    from reconciler.chunks import fetch_chunks
    from reconciler.compare import compare_chunk
    from reconciler.db import make_engine
    from reconciler.explain import explain_drifts

    engine = make_engine(os.environ[URL_ENV], pool_size=WORKERS + 1)
    tolerance = Decimal("0.01")
    started = time.perf_counter()
    with engine.connect() as conn:
        chunks = fetch_chunks(conn, CHUNK_SIZE)
    local = threading.local()

    def work(chunk: Any) -> tuple[int, int]:
        if not hasattr(local, "conn"):
            local.conn = engine.connect()
        conn = local.conn
        with conn.begin():
            drifts = compare_chunk(conn, chunk, tolerance)
            explained = explain_drifts(conn, drifts)
        return len(drifts), sum(1 for e in explained.values() if e.cause != "unknown")

    with ThreadPoolExecutor(WORKERS) as pool:
        results = list(pool.map(work, chunks))
    seconds = time.perf_counter() - started
    engine.dispose()
    return {"seconds": seconds, "drifts": sum(r[0] for r in results), "explained": sum(r[1] for r in results),
            "customers": sum(c.customers for c in chunks), "chunks": len(chunks)}


CHILDREN: dict[str, Callable[[], dict[str, object]]] = {"pipeline": child_pipeline, "engine": child_engine}


def run_child(kind: str, url: URL) -> dict[str, Any]:
    """Run a measurement in a fresh interpreter; its result includes its own peak RSS in MB."""
    env = {**os.environ, URL_ENV: url.render_as_string(hide_password=False)}
    done = subprocess.run([sys.executable, "-m", "bench.engine", "--child", kind], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"bench child {kind!r} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM belongs to the process's own memory map; ``ru_maxrss`` would also
    count the parent's pages the child was forked (vforked) from before its exec."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pipeline_available() -> bool:
    try:
        from reconciler.pipeline import run_reconciliation  # noqa: F401
    except ImportError:
        return False
    return True


# ---- the parent -------------------------------------------------------------------------------------------

def seed(url: URL, customers: int, reset: bool) -> tuple[float, int, int]:
    """Load the demo ledger with the product's COPY path; returns (seconds, entries, planted)."""
    from reconciler import demo
    from reconciler.db import make_engine

    engine = make_engine(url)
    try:
        result = demo.seed(engine, demo.SeedOptions(customers=customers, entries_per_customer=ENTRIES,
                                                    drift_rate=DRIFT_RATE, seed=SEED, reset=reset))
    finally:
        engine.dispose()
    return result.seconds, result.entries, sum(result.plants.values())


def hand_written(url: URL) -> tuple[float, int]:
    """(b): best of 3 of the one statement; returns (seconds, drifts)."""
    best, found = float("inf"), -1
    with psycopg.connect(libpq(url)) as conn:
        for _ in range(3):
            started = time.perf_counter()
            found = len(conn.execute(HAND_WRITTEN).fetchall())
            best = min(best, time.perf_counter() - started)
    return best, found


def naive(url: URL, customers: int) -> float:
    """(c): milliseconds per customer for one prepared SELECT SUM each, on a random sample."""
    sample = random.Random(SEED).sample(range(1, customers + 1), min(NAIVE_SAMPLE, customers))
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        for cid in sample[:200]:
            conn.execute(NAIVE, (cid,), prepare=True).fetchone()
        started = time.perf_counter()
        for cid in sample:
            conn.execute(NAIVE, (cid,), prepare=True).fetchone()
        return (time.perf_counter() - started) / len(sample) * 1000


def clear_runs(url: URL) -> None:
    """Forget earlier runs and tasks so each dry run does the same work (demo data only)."""
    with psycopg.connect(libpq(url)) as conn:
        conn.execute("truncate reconciler.findings, reconciler.run_chunks, reconciler.quality_results, "
                     "reconciler.tasks, reconciler.runs restart identity cascade")


def measure(url: URL, customers: int, reset: bool) -> dict[str, Any]:
    label = f"{customers:,}"
    log(f"seeding {label} customers x {ENTRIES} entries (drift rate {DRIFT_RATE})")
    seed_seconds, entries, planted = seed(url, customers, reset)
    log(f"seeded {entries:,} entries in {seed_seconds:.1f} s; {planted} planted")
    b_seconds, b_drifts = hand_written(url)
    log(f"(b) hand-written statement {b_seconds:.2f} s, {b_drifts} drifts")
    engine_only = min((run_child("engine", url) for _ in range(2)), key=lambda r: r["seconds"])
    log(f"(a') compare + explain on {WORKERS} threads {engine_only['seconds']:.2f} s, "
        f"{engine_only['rss_mb']:.0f} MB")
    pipeline, pipeline_error = None, None
    if pipeline_available() and not os.environ.get("BENCH_ENGINE_SKIP_PIPELINE"):
        clear_runs(url)
        try:
            pipeline = run_child("pipeline", url)
            log(f"(a) dry run {pipeline['seconds']:.2f} s ({pipeline['status']}), {pipeline['rss_mb']:.0f} MB")
        except RuntimeError as exc:  # reported as a failed row; the engine's own figures still stand
            pipeline_error = str(exc).splitlines()[-1]
            log(f"(a) dry run FAILED: {pipeline_error}")
    c_ms = naive(url, customers)
    log(f"(c) naive {c_ms:.4f} ms per customer")
    return {"customers": customers, "entries": entries, "planted": planted, "seed_seconds": seed_seconds,
            "b_seconds": b_seconds, "b_drifts": b_drifts, "engine": engine_only, "pipeline": pipeline,
            "pipeline_error": pipeline_error, "c_ms": c_ms}


def rows_for(small: dict[str, Any], large: dict[str, Any]) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for m in (small, large):
        n = f"{m['customers'] // 1000}k"
        out.append(row(f"demo seed {n} x {ENTRIES} (COPY, then vacuum analyze)", round(m["seed_seconds"], 2), "s"))
        out.append(row(f"demo seed {n}: entries per second", round(m["entries"] / m["seed_seconds"]), "rows/s"))
        if m["pipeline"] is not None:
            out.append(row(f"(a) run --dry-run, {n}", round(m["pipeline"]["seconds"], 2), "s"))
        elif m["pipeline_error"] is not None:
            out.append(row(f"(a) run --dry-run, {n}: failed ({m['pipeline_error'][:80]})", False, "bool", "runs",
                           False))
        out.append(row(f"(a') chunked compare + explain, {WORKERS} workers, {n}", round(m["engine"]["seconds"], 2),
                       "s"))
        out.append(row(f"(b) one hand-written SQL statement, {n}", round(m["b_seconds"], 2), "s"))
        out.append(row(f"(c) naive SELECT SUM per customer, {n}", round(m["c_ms"], 4), "ms"))
        out.append(row(f"(c) naive extrapolated to {n}", round(m["c_ms"] * m["customers"] / 1000, 1), "s"))
        found = {m["b_drifts"], m["engine"]["drifts"], m["engine"]["explained"]}
        if m["pipeline"] is not None:
            found.add(m["pipeline"]["drifts"])
        out.append(row(f"every planted drift found and explained, {n}", found == {m["planted"]}, "bool",
                       "yes", found == {m["planted"]}))
    n = f"{large['customers'] // 1000}k"
    small_n = f"{small['customers'] // 1000}k"
    a_key = "pipeline" if large["pipeline"] is not None else "engine"
    a_name = "(a) dry run" if a_key == "pipeline" else "(a') compare + explain"
    ratio = large[a_key]["seconds"] / large["b_seconds"]
    out.append(row(f"{a_name} / (b), {n}", round(ratio, 2), "x", f"<= {RATIO_TARGET}x", ratio <= RATIO_TARGET))
    if a_key == "pipeline":
        engine_ratio = large["engine"]["seconds"] / large["b_seconds"]
        out.append(row(f"(a') compare + explain / (b), {n}", round(engine_ratio, 2), "x", f"<= {RATIO_TARGET}x",
                       engine_ratio <= RATIO_TARGET))
    growth = large[a_key]["seconds"] / small[a_key]["seconds"]
    out.append(row(f"{a_name} time growth {small_n} -> {n}", round(growth, 2), "x", f"<= {GROWTH_TARGET}x",
                   growth <= GROWTH_TARGET))
    for m in (small, large):
        mn = f"{m['customers'] // 1000}k"
        rss = m[a_key]["rss_mb"]
        out.append(row(f"{a_name} peak RSS, {mn}", round(rss, 1), "MB", f"<= {RSS_TARGET_MB:.0f} MB",
                       rss <= RSS_TARGET_MB))
    flat = large[a_key]["rss_mb"] / small[a_key]["rss_mb"]
    out.append(row(f"{a_name} peak RSS {n} / {small_n}", round(flat, 2), "x", f"<= {RSS_FLAT_TARGET}x (flat)",
                   flat <= RSS_FLAT_TARGET))
    if a_key == "pipeline":
        for m in (small, large):
            mn = f"{m['customers'] // 1000}k"
            out.append(row(f"(a') compare + explain peak RSS, {mn}", round(m["engine"]["rss_mb"], 1), "MB"))
    speedup = large["c_ms"] * large["customers"] / 1000 / large[a_key]["seconds"]
    out.append(row(f"naive (c) / {a_name}, {n}", round(speedup, 1), "x"))
    return out


def run(quick: bool, engine_url: URL) -> list[dict[str, object]]:
    """The section's rows (``python -m bench`` calls this with a freshly migrated database)."""
    small_size, large_size = sizes(quick)
    small = measure(engine_url, small_size, reset=True)  # reset is refused unless the data is demo data
    large = measure(engine_url, large_size, reset=True)
    return rows_for(small, large)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.engine", description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--url", help="a migrated, empty (or demo) database; default: RECONCILER_DATABASE_URL")
    args = parser.parse_args(argv)
    if args.child:
        result = CHILDREN[args.child]()
        result["rss_mb"] = peak_rss_mb()
        print(json.dumps(result, default=str), flush=True)
        return 0
    url = args.url or os.environ.get(URL_ENV)
    if not url:
        parser.error("give --url or set RECONCILER_DATABASE_URL (a migrated database for demo data)")
    from reconciler.db import normalise_url

    rows = run(args.quick, normalise_url(make_url(url)))
    for r in rows:
        print(f"{r['name']}: {r['value']} {r['unit']} {'' if r['ok'] is None else ('ok' if r['ok'] else 'NO')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
