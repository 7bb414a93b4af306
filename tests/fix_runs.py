"""Running a reconciliation in a test and reading what it found (shared by the incremental-run tests)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, text

from reconciler.pipeline import RunOptions, RunSummary, run_reconciliation


def dry_run(engine: Engine, mode: str, *, chunk_size: int, **options: Any) -> RunSummary:
    """A dry run (findings and tasks, no correction) in ``mode``; the halt is off so every drift is staged."""
    return run_reconciliation(engine, RunOptions(mode=mode, dry_run=True, max_drift_ratio=Decimal(1),
                                                 chunk_size=chunk_size, **options))


def found(engine: Engine, run_id: int) -> set[int]:
    """The customers a run found drifting."""
    with engine.connect() as conn:
        return set(conn.execute(text("select customer_id from reconciler.findings where run_id = :r"),
                                {"r": run_id}).scalars())
