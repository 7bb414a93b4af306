"""Bench section ``engine``: the reconciliation read path at 1,000,000 customers x 20 entries.

In ONE run, on data loaded by the product's own ``demo seed`` code (binary COPY), for two sizes
(full: 100k and 1M customers; quick: 10k and 100k; ``BENCH_ENGINE_CUSTOMERS=100000,1000000`` and
``BENCH_ENGINE_ENTRIES=20`` override them), on a ledger whose ``created_at`` spans the last 30 days
(*history*) and, at the larger size, again on one loaded within the last hour (*fresh*):

(a) the reconciliation dry run, ``run_reconciliation(engine, RunOptions(dry_run=True))`` (chunks of
    10,000 on 2 worker connections, then quality, tasks, report), in a subprocess whose peak RSS
    (``VmHWM``) and its quality worker's are read, with the time of each step; and, in another subprocess,
    the engine's own part alone: chunk planning, ``compare_chunk`` and ``explain_drifts``;
(b) the limit: one hand-written SQL statement computing every drift with the covering index, as the server
    plans it (parallel workers, JIT), serial (``max_parallel_workers_per_gather = 0``) and without JIT: the
    best of them is the baseline (one psycopg connection);
(c) the naive way: one ``SELECT SUM`` per customer (prepared, on one connection) over a random sample,
    extrapolated to every customer.

(a) and (b) alternate in rounds (full: 2, quick: 1), so each ratio compares figures from the same minutes of
this machine. At the larger size, the comparison alone is also swept over chunk sizes and worker counts
(the figures behind the defaults, bench/README.md).

Targets: (a) <= 1.5x (b) at the larger size with history, <= 1.6x fresh; the quality step <= 10% of (a);
(a) grows <= 12x from the smaller size to the larger (10x the data); peak RSS of (a) (the run's process plus
its quality worker) <= 300 MB at both sizes and flat (larger <= 1.3x smaller).
Every measurement also checks that it found exactly the planted drifts.
"""

from __future__ import annotations

import argparse
import datetime as dt
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
FRESH_RATIO_TARGET = 1.6
QUALITY_SHARE_TARGET = 10.0
HISTORY = dt.timedelta(days=30)
FRESH = dt.timedelta(minutes=50)
#: (chunk size, workers) for the comparison sweep at the larger size.
SWEEP = ((10_000, 1), (10_000, 2), (50_000, 2), (100_000, 2))
#: The hand-written statement's variants: the best of them is the baseline.
BASELINE_SETTINGS = {"as planned (parallel, JIT)": "", "serial plan": "set max_parallel_workers_per_gather = 0",
                     "no JIT": "set jit = off"}
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
    """(a): the dry run through the pipeline, with the wall time of each step."""
    from bench.step_timer import timed_steps
    from reconciler.db import make_engine
    from reconciler.pipeline import RunOptions, run_reconciliation

    steps = timed_steps()
    from reconciler import gx_runtime, quality

    gx_import: list[float] = []
    original_import = quality.import_great_expectations

    def timed_import() -> Any:
        started = time.perf_counter()
        try:
            return original_import()
        finally:
            gx_import.append(time.perf_counter() - started)
    # Both names: the preload thread calls gx_runtime's, the quality step quality's (the first call is timed).
    quality.import_great_expectations = gx_runtime.import_great_expectations = timed_import
    # The product's own pool (as `reconciler run` makes it): the run holds one connection for its session lock and
    # each chunk worker two at once (its bookkeeping transaction and its read-only comparison); a smaller pool
    # would open a fresh overflow connection per chunk (with pool_size=4 the comparison step took 3.2-3.7 s at 1M
    # against 1.7-1.9 s for the comparison alone).
    engine = make_engine(os.environ[URL_ENV])
    with tempfile.TemporaryDirectory(prefix="bench-report-") as reports:
        started = time.perf_counter()
        summary = run_reconciliation(engine, RunOptions(dry_run=True, workers=WORKERS, chunk_size=CHUNK_SIZE),
                                     trigger="manual", report_dir=Path(reports))
        seconds = time.perf_counter() - started
    engine.dispose()
    return {"seconds": seconds, "drifts": summary.drift_count, "customers": summary.customers_checked,
            "status": summary.status, "steps": steps, "gx_import": gx_import[0] if gx_import else 0.0,
            "worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def child_gx_import() -> dict[str, object]:
    """(f): Great Expectations' import alone, in a fresh interpreter that already holds what a run's process
    holds before its quality step (SQLAlchemy, psycopg, the pipeline); ``BENCH_CHILD_EAGER=1``: without the
    product's deferred imports (as ``import great_expectations`` does it)."""
    from reconciler import gx_runtime, quality
    from reconciler.pipeline import run_reconciliation  # noqa: F401

    if os.environ.get("BENCH_CHILD_EAGER") == "1":
        gx_runtime.DEFERRED_IMPORTS = ()
    started = time.perf_counter()
    quality.import_great_expectations()
    return {"seconds": time.perf_counter() - started}


def child_engine() -> dict[str, object]:
    """(a'): the engine's own part: plan, compare every chunk and explain, on WORKERS threads."""
    from reconciler.chunks import fetch_chunks
    from reconciler.compare import compare_chunk
    from reconciler.db import make_engine
    from reconciler.explain import explain_drifts

    workers = int(os.environ.get("BENCH_CHILD_WORKERS", WORKERS))
    chunk_size = int(os.environ.get("BENCH_CHILD_CHUNK_SIZE", CHUNK_SIZE))
    engine = make_engine(os.environ[URL_ENV], pool_size=workers + 1)
    tolerance = Decimal("0.01")
    started = time.perf_counter()
    with engine.connect() as conn:
        chunks = fetch_chunks(conn, chunk_size)
    local = threading.local()

    def work(chunk: Any) -> tuple[int, int]:
        if not hasattr(local, "conn"):
            local.conn = engine.connect()
        conn = local.conn
        with conn.begin():
            drifts = compare_chunk(conn, chunk, tolerance)
            explained = explain_drifts(conn, drifts)
        return len(drifts), sum(1 for e in explained.values() if e.cause != "unknown")

    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(work, chunks))
    seconds = time.perf_counter() - started
    engine.dispose()
    return {"seconds": seconds, "drifts": sum(r[0] for r in results), "explained": sum(r[1] for r in results),
            "customers": sum(c.customers for c in chunks), "chunks": len(chunks)}


CHILDREN: dict[str, Callable[[], dict[str, object]]] = {"pipeline": child_pipeline, "engine": child_engine,
                                                         "gx_import": child_gx_import}


def run_child(kind: str, url: URL, **settings: int) -> dict[str, Any]:
    """Run a measurement in a fresh interpreter; its result includes its own peak RSS in MB."""
    env = {**os.environ, URL_ENV: url.render_as_string(hide_password=False),
           **{f"BENCH_CHILD_{key.upper()}": str(value) for key, value in settings.items()}}
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

def seed(url: URL, customers: int, reset: bool, span: dt.timedelta = HISTORY) -> tuple[float, int, int]:
    """Load the demo ledger with the product's COPY path, its entries dated within ``span`` before now;
    returns (seconds, entries, planted)."""
    from reconciler import demo
    from reconciler.db import make_engine

    engine = make_engine(url)
    try:
        result = demo.seed(engine, demo.SeedOptions(customers=customers, entries_per_customer=ENTRIES,
                                                    drift_rate=DRIFT_RATE, seed=SEED, reset=reset,
                                                    created_until=dt.datetime.now(dt.UTC), created_span=span))
    finally:
        engine.dispose()
    return result.seconds, result.entries, sum(result.plants.values())


def hand_written(url: URL) -> dict[str, tuple[float, int]]:
    """(b): each variant of the one statement once, on a fresh connection; {variant: (seconds, drifts)}."""
    out: dict[str, tuple[float, int]] = {}
    for label, setting in BASELINE_SETTINGS.items():
        with psycopg.connect(libpq(url)) as conn:
            if setting:
                conn.execute(setting)
            started = time.perf_counter()
            found = len(conn.execute(HAND_WRITTEN).fetchall())
            out[label] = (time.perf_counter() - started, found)
    return out


def best_baseline(rounds: list[dict[str, tuple[float, int]]]) -> tuple[str, float, int]:
    """The fastest variant over every round: (variant, seconds, drifts)."""
    label, (seconds, drifts) = min(((k, v) for r in rounds for k, v in r.items()), key=lambda kv: kv[1][0])
    return label, seconds, drifts


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


def rounds(quick: bool) -> int:
    return 1 if quick else 2


def measure(url: URL, customers: int, reset: bool, *, quick: bool, span: dt.timedelta = HISTORY,
            ledger: str = "history", sweep: bool = False, naive_too: bool = True) -> dict[str, Any]:
    label = f"{customers:,}"
    log(f"seeding {label} customers x {ENTRIES} entries ({ledger}: created_at within {span}) "
        f"(drift rate {DRIFT_RATE})")
    seed_seconds, entries, planted = seed(url, customers, reset, span)
    log(f"seeded {entries:,} entries in {seed_seconds:.1f} s; {planted} planted")
    baselines: list[dict[str, tuple[float, int]]] = []
    pipelines: list[dict[str, Any]] = []
    engines: list[dict[str, Any]] = []
    gx_imports: list[tuple[float, float]] = []
    pipeline_error = None
    run_pipeline = pipeline_available() and not os.environ.get("BENCH_ENGINE_SKIP_PIPELINE")
    for number in range(rounds(quick)):  # rounds alternate baseline and measurement
        baselines.append(hand_written(url))
        log(f"round {number + 1}: (b) " + ", ".join(f"{k} {v[0]:.2f} s" for k, v in baselines[-1].items()))
        engines.append(run_child("engine", url))
        log(f"round {number + 1}: (a') compare + explain on {WORKERS} threads {engines[-1]['seconds']:.2f} s")
        gx_imports.append((run_child("gx_import", url)["seconds"], run_child("gx_import", url, eager=1)["seconds"]))
        log(f"round {number + 1}: (f) GX import alone {gx_imports[-1][0]:.2f} s, eager {gx_imports[-1][1]:.2f} s")
        if run_pipeline and pipeline_error is None:
            clear_runs(url)
            try:
                pipelines.append(run_child("pipeline", url))
                steps = ", ".join(f"{k} {v:.2f}" for k, v in pipelines[-1]["steps"].items())
                log(f"round {number + 1}: (a) dry run {pipelines[-1]['seconds']:.2f} s ({steps}), "
                    f"{pipelines[-1]['rss_mb']:.0f} MB + worker {pipelines[-1]['worker_rss_mb']:.0f} MB")
            except RuntimeError as exc:  # reported as a failed row; the engine's own figures still stand
                pipeline_error = str(exc).splitlines()[-1]
                log(f"(a) dry run FAILED: {pipeline_error}")
    variant, b_seconds, b_drifts = best_baseline(baselines)
    swept: list[dict[str, Any]] = []
    if sweep:
        for chunk_size, workers in SWEEP:
            base = hand_written(url)
            result = run_child("engine", url, chunk_size=chunk_size, workers=workers)
            best = min(v[0] for v in base.values())
            swept.append({"chunk_size": chunk_size, "workers": workers, "seconds": result["seconds"],
                          "baseline": best, "drifts": result["drifts"]})
            log(f"sweep: chunks of {chunk_size:,} on {workers} worker(s) {result['seconds']:.2f} s "
                f"(best single statement {best:.2f} s)")
    c_ms = naive(url, customers) if naive_too else None
    if c_ms is not None:
        log(f"(c) naive {c_ms:.4f} ms per customer")
    return {"customers": customers, "entries": entries, "planted": planted, "seed_seconds": seed_seconds,
            "ledger": ledger, "b_seconds": b_seconds, "b_variant": variant, "b_drifts": b_drifts,
            "baselines": baselines, "engine": min(engines, key=lambda r: r["seconds"]),
            "pipeline": min(pipelines, key=lambda r: r["seconds"]) if pipelines else None,
            "pipeline_error": pipeline_error, "c_ms": c_ms, "sweep": swept,
            "gx_import": min(g[0] for g in gx_imports), "gx_import_eager": min(g[1] for g in gx_imports)}


def _n(m: dict[str, Any]) -> str:
    return f"{m['customers'] // 1000}k"


def rows_for(small: dict[str, Any], large: dict[str, Any], fresh: dict[str, Any] | None) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    measured = [small, large] + ([fresh] if fresh is not None else [])
    for m in measured:
        n, led = _n(m), m["ledger"]
        out.append(row(f"demo seed {n} x {ENTRIES}, {led} (COPY, then vacuum analyze)", round(m["seed_seconds"], 2),
                       "s"))
        for variant in BASELINE_SETTINGS:
            best = min(r[variant][0] for r in m["baselines"])
            out.append(row(f"(b) one hand-written SQL statement, {variant}, {n}, {led}", round(best, 2), "s"))
        out.append(row(f"(b) best single statement ({m['b_variant']}), {n}, {led}", round(m["b_seconds"], 2), "s"))
        if m["pipeline"] is not None:
            pipe = m["pipeline"]
            out.append(row(f"(a) run --dry-run, {n}, {led}", round(pipe["seconds"], 2), "s"))
            for step, seconds in pipe["steps"].items():
                out.append(row(f"(a) step {step.strip('_')}, {n}, {led}", round(seconds, 2), "s"))
                if step == "check_quality":
                    out.append(row(f"(a) step check_quality: of it GX's import, {n}, {led}",
                                   round(pipe.get("gx_import", 0.0), 2), "s"))
                    out.append(row(f"(a) step check_quality: of it after the import, {n}, {led}",
                                   round(seconds - pipe.get("gx_import", 0.0), 2), "s"))
        elif m["pipeline_error"] is not None:
            out.append(row(f"(a) run --dry-run, {n}, {led}: failed ({m['pipeline_error'][:80]})", False, "bool",
                           "runs", False))
        out.append(row(f"(f) GX import alone, fresh process (scipy.stats deferred), {n}, {led}",
                       round(m["gx_import"], 2), "s"))
        out.append(row(f"(f) GX import alone, fresh process, eager (plain import), {n}, {led}",
                       round(m["gx_import_eager"], 2), "s"))
        out.append(row(f"(a') chunked compare + explain, {WORKERS} workers, {n}, {led}",
                       round(m["engine"]["seconds"], 2), "s"))
        if m["c_ms"] is not None:
            out.append(row(f"(c) naive SELECT SUM per customer, {n}", round(m["c_ms"], 4), "ms"))
            out.append(row(f"(c) naive extrapolated to {n}", round(m["c_ms"] * m["customers"] / 1000, 1), "s"))
        found = {m["b_drifts"], m["engine"]["drifts"], m["engine"]["explained"]}
        if m["pipeline"] is not None:
            found.add(m["pipeline"]["drifts"])
        out.append(row(f"every planted drift found and explained, {n}, {led}", found == {m["planted"]}, "bool",
                       "yes", found == {m["planted"]}))
    judged_sizes: list[tuple[dict[str, Any], float]] = [(large, RATIO_TARGET)]
    if fresh is not None:
        judged_sizes.append((fresh, FRESH_RATIO_TARGET))
    for m, target in judged_sizes:
        n, led = _n(m), m["ledger"]
        if m["pipeline"] is not None:
            ratio = m["pipeline"]["seconds"] / m["b_seconds"]
            out.append(row(f"(a) dry run / (b) best single statement, {n}, {led}", round(ratio, 2), "x",
                           f"<= {target}x", ratio <= target))
        engine_ratio = m["engine"]["seconds"] / m["b_seconds"]
        out.append(row(f"(a') compare + explain / (b) best single statement, {n}, {led}", round(engine_ratio, 2),
                       "x", f"<= {target}x", engine_ratio <= target))
    for m in measured:
        if m["pipeline"] is None:
            continue
        share = 100 * m["pipeline"]["steps"].get("check_quality", 0.0) / m["pipeline"]["seconds"]
        judged = m is not small
        out.append(row(f"(a) quality step's share of the run, {_n(m)}, {m['ledger']}", round(share, 1), "%",
                       f"<= {QUALITY_SHARE_TARGET:g}%" if judged else None,
                       share <= QUALITY_SHARE_TARGET if judged else None))
    if small["pipeline"] is not None and large["pipeline"] is not None:
        growth = large["pipeline"]["seconds"] / small["pipeline"]["seconds"]
        out.append(row(f"(a) dry run time growth {_n(small)} -> {_n(large)}", round(growth, 2), "x",
                       f"<= {GROWTH_TARGET}x", growth <= GROWTH_TARGET))
        rss = {}
        for m in (small, large):
            pipe = m["pipeline"]
            rss[_n(m)] = pipe["rss_mb"] + pipe["worker_rss_mb"]
            out.append(row(f"(a) dry run peak RSS, run process, {_n(m)}", round(pipe["rss_mb"], 1), "MB"))
            out.append(row(f"(a) dry run peak RSS, quality worker, {_n(m)}", round(pipe["worker_rss_mb"], 1), "MB"))
            out.append(row(f"(a) dry run peak RSS, both (sum of peaks), {_n(m)}", round(rss[_n(m)], 1), "MB",
                           f"<= {RSS_TARGET_MB:.0f} MB", rss[_n(m)] <= RSS_TARGET_MB))
        flat = rss[_n(large)] / rss[_n(small)]
        out.append(row(f"(a) dry run peak RSS {_n(large)} / {_n(small)}", round(flat, 2), "x",
                       f"<= {RSS_FLAT_TARGET}x (flat)", flat <= RSS_FLAT_TARGET))
    for m in (small, large):
        out.append(row(f"(a') compare + explain peak RSS, {_n(m)}", round(m["engine"]["rss_mb"], 1), "MB"))
    for swept in large["sweep"]:
        ratio = swept["seconds"] / swept["baseline"]
        out.append(row(f"(a') compare + explain, chunks of {swept['chunk_size']:,}, {swept['workers']} worker(s) / "
                       f"best single statement, {_n(large)}", round(ratio, 2), "x"))
    if large["c_ms"] is not None and large["pipeline"] is not None:
        speedup = large["c_ms"] * large["customers"] / 1000 / large["pipeline"]["seconds"]
        out.append(row(f"naive (c) / (a) dry run, {_n(large)}", round(speedup, 1), "x"))
    return out


def run(quick: bool, engine_url: URL) -> list[dict[str, object]]:
    """The section's rows (``python -m bench`` calls this with a freshly migrated database)."""
    small_size, large_size = sizes(quick)
    small = measure(engine_url, small_size, reset=True, quick=quick)  # reset: refused unless demo data
    large = measure(engine_url, large_size, reset=True, quick=quick, sweep=not os.environ.get("BENCH_ENGINE_NO_SWEEP"))
    fresh = None
    if not os.environ.get("BENCH_ENGINE_NO_FRESH"):
        fresh = measure(engine_url, large_size, reset=True, quick=quick, span=FRESH, ledger="fresh", naive_too=False)
    return rows_for(small, large, fresh)


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
