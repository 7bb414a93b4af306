"""Bench section ``cli``: start-up cost of the command line, warm, against the bare interpreter.

On a small demo ledger (1,000 customers), rounds alternate: ``python -c pass`` (the floor any Python command
pays), ``reconciler --help`` and ``reconciler check 1 --json`` (its database given by
``RECONCILER_DATABASE_URL``), each as a fresh process, after one warm-up round (files in the page cache).
The best round is the warm figure (what the machine does when nothing else takes the CPU); the median is
shown beside it, with the load average, because this machine is shared.

Targets: ``reconciler --help`` <= 0.3 s, ``reconciler check ID --json`` <= 0.5 s.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

from sqlalchemy.engine import URL

SECTION = "cli"
ROUNDS = 10
QUICK_ROUNDS = 5
HELP_TARGET = 0.3
CHECK_TARGET = 0.5
ROOT = Path(__file__).resolve().parent.parent


def row(name: str, value: float, unit: str, target: str | None = None, ok: bool | None = None) -> dict[str, object]:
    return {"section": SECTION, "name": name, "value": round(value, 3), "unit": unit, "target": target, "ok": ok}


def _timed(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}: {done.stderr[-2000:]}")
    return seconds


def run(quick: bool, engine_url: URL) -> list[dict[str, object]]:
    """The section's rows (``python -m bench`` calls this with a freshly migrated database)."""
    from reconciler import demo
    from reconciler.db import make_engine

    engine = make_engine(engine_url)
    try:
        demo.seed(engine, demo.SeedOptions(customers=1_000, entries_per_customer=10, drift_rate=Decimal("0.01")))
    finally:
        engine.dispose()
    env = {**os.environ, "RECONCILER_DATABASE_URL": engine_url.render_as_string(hide_password=False)}
    script = str(Path(sys.executable).parent / "reconciler")
    commands = {"python -c pass": [sys.executable, "-c", "pass"],
                "reconciler --help": [script, "--help"],
                "reconciler check 1 --json": [script, "check", "1", "--json"]}
    for command in commands.values():  # warm-up: files in the page cache, the server's catalog in memory
        _timed(command, env)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(QUICK_ROUNDS if quick else ROUNDS):
        for name, command in commands.items():
            times[name].append(_timed(command, env))
    rows: list[dict[str, object]] = []
    for name, target in (("python -c pass", None), ("reconciler --help", HELP_TARGET),
                         ("reconciler check 1 --json", CHECK_TARGET)):
        best, median = min(times[name]), statistics.median(times[name])
        rows.append(row(f"{name}, warm (best of {len(times[name])})", best, "s",
                        f"<= {target} s" if target else None, best <= target if target else None))
        rows.append(row(f"{name}, median", median, "s"))
    floor = min(times["python -c pass"])
    for name in ("reconciler --help", "reconciler check 1 --json"):
        rows.append(row(f"{name} / bare interpreter (best rounds)", min(times[name]) / floor, "x"))
    return rows
