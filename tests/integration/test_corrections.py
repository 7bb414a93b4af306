"""Corrections go through the balance core only, re-verified under the row lock, and never twice."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import Engine, text

from reconciler import pipeline
from reconciler.balances import BalanceManager
from reconciler.corrections import Outcome, TaskRef, apply_correction
from reconciler.pipeline import RunOptions
from reconciler.tasks import TaskView, list_tasks
from tests.factories import (
    cached_balance,
    entry_count,
    ledger_sum,
    make_drifting_customer,
    set_cached_balance,
)

NO_HALT = Decimal("1")


pytestmark = pytest.mark.usefixtures("quick_quality_and_report")


def staged_run(engine: Engine, options: RunOptions) -> int:
    """A run compared and with its tasks opened, stopped just before corrections (as an orchestrator would)."""
    run_id = pipeline.start_run(engine, options, "manual")
    for chunk in pipeline.plan_run(engine, run_id):
        pipeline.compare_run_chunk(engine, run_id, chunk["chunk_index"])
    pipeline.open_run_tasks(engine, run_id)
    return run_id


def the_task(engine: Engine, customer_id: int) -> TaskView:
    with engine.connect() as conn:
        (task,) = [t for t in list_tasks(conn) if t.customer_id == customer_id]
    return task


def reconciliations(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("select count(*) from reconciler.balance_reconciliations")).scalar_one())


@pytest.mark.parametrize("policy", ["ledger", "balance"])
def test_the_same_correction_applied_twice_changes_nothing(engine: Engine, policy: str) -> None:
    """apply_correction twice for one task: the second replays the first (same key), no new entry or balance."""
    make_drifting_customer(engine, 1, drift="7.00")
    run_id = staged_run(engine, RunOptions(max_drift_ratio=NO_HALT))
    task = TaskRef(the_task(engine, 1).id, 1, run_id)
    core = BalanceManager(engine)
    first = apply_correction(core, task, policy=policy)
    balance, entries = cached_balance(engine, 1), entry_count(engine)
    second = apply_correction(core, task, policy=policy)
    assert first.outcome is second.outcome is Outcome.CORRECTED
    assert second.reconciliation is not None and second.reconciliation.replayed
    assert (cached_balance(engine, 1), entry_count(engine)) == (balance, entries)
    assert cached_balance(engine, 1) == ledger_sum(engine, 1)
    assert reconciliations(engine) == 1
    assert entries == 1 + (policy == "balance")


def test_a_drift_that_vanished_before_the_correction_is_left_alone(engine: Engine) -> None:
    """Fixed between comparison and correction: nothing is written and the task is dismissed saying why."""
    make_drifting_customer(engine, 1, drift="7.00")
    run_id = staged_run(engine, RunOptions(max_drift_ratio=NO_HALT, policy="balance"))
    set_cached_balance(engine, 1, "100.00")
    result = pipeline.apply_run_corrections(engine, run_id)
    assert result["vanished"] == 1 and result["corrected"] == 0
    assert entry_count(engine) == 1 and cached_balance(engine, 1) == Decimal("100.00")
    task = the_task(engine, 1)
    assert task.status == "dismissed" and "vanished" in str(task.events[-1]["note"])


def test_a_drift_that_changed_is_corrected_as_it_stands_now(engine: Engine) -> None:
    """The drift grew from 7.00 to 9.50 after the comparison: the correction uses 9.50, not the stale 7.00."""
    make_drifting_customer(engine, 1, drift="7.00")
    run_id = staged_run(engine, RunOptions(max_drift_ratio=NO_HALT, policy="balance"))
    set_cached_balance(engine, 1, "109.50")
    result = pipeline.apply_run_corrections(engine, run_id)
    assert result["corrected"] == 1
    assert cached_balance(engine, 1) == ledger_sum(engine, 1) == Decimal("109.50")
    task = the_task(engine, 1)
    assert task.status == "corrected" and task.resolution["drift"] == "9.50"


def test_a_drift_that_grew_beyond_the_limit_goes_to_review_instead(engine: Engine) -> None:
    """Found at 7.00, grown to 500.00 before the correction: it needs review and nothing is written."""
    make_drifting_customer(engine, 1, drift="7.00")
    run_id = staged_run(engine, RunOptions(max_drift_ratio=NO_HALT))
    set_cached_balance(engine, 1, "600.00")
    result = pipeline.apply_run_corrections(engine, run_id)
    assert (result["corrected"], result["needs_review"]) == (0, 1)
    assert cached_balance(engine, 1) == Decimal("600.00")
    assert the_task(engine, 1).status == "needs_review"


def test_a_locked_customer_is_skipped_as_busy_and_the_run_still_finishes(engine: Engine) -> None:
    """A payment holding the row lock makes the correction skip the customer at once (NOWAIT) as busy: the
    task stays open, the other customer is corrected, the run succeeds, and the next run corrects it."""
    make_drifting_customer(engine, 1, drift="7.00")
    make_drifting_customer(engine, 2, drift="3.00")
    options = RunOptions(max_drift_ratio=NO_HALT)
    run_id = staged_run(engine, options)
    with engine.connect() as payment:
        payment.begin()
        payment.execute(text("select balance from customers where id = 1 for update"))
        result = pipeline.apply_run_corrections(engine, run_id)
        payment.rollback()
    assert (result["busy"], result["deferred"], result["corrected"]) == (1, 0, 1)
    summary = pipeline.finish_run(engine, run_id)
    assert summary.status == "succeeded" and summary.corrected == 1 and summary.open == 1 and summary.exit_code == 1
    task = the_task(engine, 1)
    assert task.status == "open" and task.events[-1]["action"] == "busy"
    assert "locked by another session" in str(task.events[-1]["note"]) and "pending" not in task.resolution
    assert cached_balance(engine, 1) == Decimal("107.00")
    again = pipeline.run_reconciliation(engine, options)
    assert again.corrected == 1 and again.exit_code == 0
    assert cached_balance(engine, 1) == ledger_sum(engine, 1)


def test_a_correction_left_in_flight_is_completed_not_repeated(engine: Engine) -> None:
    """The process died after the core corrected but before the task was updated: the next run finds the
    customer clean, keeps the task, replays the same key (no second correction) and records it corrected."""
    make_drifting_customer(engine, 1, drift="7.00")
    first = staged_run(engine, RunOptions(max_drift_ratio=NO_HALT, policy="balance"))
    task = the_task(engine, 1)
    from reconciler import tasks

    with engine.begin() as conn:  # what correct_task does first...
        tasks.mark_pending(conn, task.id, policy="balance", by=f"run {first}", run_id=first)
    apply_correction(BalanceManager(engine), TaskRef(task.id, 1, first), policy="balance")  # ...then "crash"
    pipeline.mark_run_failed(engine, first, "test: killed after the core committed")
    entries = entry_count(engine)
    summary = pipeline.run_reconciliation(engine, RunOptions(max_drift_ratio=NO_HALT, policy="ledger"))
    assert summary.drift_count == 0 and summary.corrected == 1
    assert entry_count(engine) == entries and reconciliations(engine) == 1
    after = the_task(engine, 1)
    assert after.status == "corrected" and after.correction_entry_id is not None
    assert after.resolution["policy"] == "balance" and "pending" not in after.resolution


def test_a_task_resolved_meanwhile_is_not_corrected(engine: Engine) -> None:
    """A person dismissed the task between the comparison and the correction step: nothing is written."""
    make_drifting_customer(engine, 1, drift="7.00")
    run_id = staged_run(engine, RunOptions(max_drift_ratio=NO_HALT))
    from reconciler.correction_executor import resolve_task

    resolve_task(engine, the_task(engine, 1).id, "dismiss", "carol", "handled by hand")
    result = pipeline.apply_run_corrections(engine, run_id)
    assert result["corrected"] == 0
    assert cached_balance(engine, 1) == Decimal("107.00")
