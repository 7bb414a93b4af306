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


def guarded_ledger(engine: Engine, customers: range, opening: Decimal, *, chunk_size: int) -> RunSummary:
    """Customers written by the core (one opening balance each), the guard observing, and a first full dry run
    that sets the verified point; returns that run, asserted clean and verified."""
    from reconciler.balances import BalanceManager
    from reconciler.guard import install
    from tests.factories import make_customer

    install(engine, "observe")
    core = BalanceManager(engine)
    for customer_id in customers:
        make_customer(engine, customer_id)
        core.update_balance(customer_id, opening, kind="opening_balance")
    first = dry_run(engine, "full", chunk_size=chunk_size)
    assert first.verified_to is not None and first.drift_count == 0
    return first
