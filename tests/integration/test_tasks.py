"""The task lifecycle: one unresolved task per customer, refreshed by reruns, dismissed when the drift
vanishes, resolved by hand with an audit trail."""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest
from sqlalchemy import Engine, func, select

from reconciler import pipeline
from reconciler.correction_executor import resolve_task
from reconciler.errors import InvalidOperationError, TaskNotFoundError, TaskStateError
from reconciler.pipeline import RunOptions, run_reconciliation
from reconciler.schema import tasks as tasks_table
from reconciler.tasks import TaskView, get_task, list_tasks
from tests.factories import (
    cached_balance,
    entry_count,
    ledger_sum,
    make_drifting_customer,
    set_cached_balance,
)

DRY = RunOptions(dry_run=True, max_drift_ratio=Decimal("1"))


pytestmark = pytest.mark.usefixtures("quick_quality_and_report")


def only_task(engine: Engine, customer_id: int) -> TaskView:
    with engine.connect() as conn:
        found = [task for task in list_tasks(conn) if task.customer_id == customer_id]
    assert len(found) == 1, found
    return found[0]


@pytest.fixture
def drifting(engine: Engine) -> Engine:
    """Customers 1..4: 2 drifts +4.00, 3 drifts +250.00 (beyond the limit), 1 and 4 clean."""
    make_drifting_customer(engine, 1)
    make_drifting_customer(engine, 2, drift="4.00")
    make_drifting_customer(engine, 3, drift="250.00")
    make_drifting_customer(engine, 4)
    return engine


def test_a_rerun_refreshes_the_task_instead_of_opening_another(drifting: Engine) -> None:
    """Two dry runs: still one task per drifting customer, opened by the first, last seen by the second."""
    engine = drifting
    first = run_reconciliation(engine, DRY)
    second = run_reconciliation(engine, DRY)
    task = only_task(engine, 2)
    assert (task.run_id, task.last_seen_run_id, task.status) == (first.run_id, second.run_id, "open")
    assert [event["action"] for event in task.events] == ["open"]  # nothing changed: no extra event
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(tasks_table)).scalar_one() == 2


def test_a_changed_drift_updates_the_task_and_is_audited(drifting: Engine) -> None:
    """The drift grows between runs: the same task carries the new drift, and an update event the old one."""
    engine = drifting
    run_reconciliation(engine, DRY)
    set_cached_balance(engine, 2, "106.50")
    second = run_reconciliation(engine, DRY)
    task = only_task(engine, 2)
    assert (task.drift, task.stored_balance, task.ledger_sum) == (Decimal("6.50"), Decimal("106.50"),
                                                                    Decimal("100.00"))
    update = task.events[-1]
    assert update["action"] == "update" and update["run_id"] == second.run_id
    assert (update["values"]["old_drift"], update["values"]["drift"]) == ("4.00", "6.50")


def test_a_vanished_drift_is_dismissed_with_the_reason(drifting: Engine) -> None:
    """Fixed outside the product, the drift is gone at the next run: the task is dismissed, saying why."""
    engine = drifting
    run_reconciliation(engine, DRY)
    set_cached_balance(engine, 2, "100.00")
    second = run_reconciliation(engine, DRY)
    task = only_task(engine, 2)
    assert task.status == "dismissed" and task.resolved_at is not None
    assert task.events[-1]["note"] == f"drift vanished, seen clean in run {second.run_id}"
    assert task.events[-1]["from"] == "open" and task.events[-1]["to"] == "dismissed"
    assert second.details["tasks"]["dismissed"] == 1


def test_a_task_outside_the_runs_scope_is_left_alone(drifting: Engine) -> None:
    """A run over other customers never dismisses a task it did not check."""
    engine = drifting
    run_reconciliation(engine, DRY)
    set_cached_balance(engine, 2, "100.00")
    run_reconciliation(engine, RunOptions(customer_ids=(1, 4), dry_run=True))
    run_reconciliation(engine, RunOptions(from_id=3, to_id=4, dry_run=True, max_drift_ratio=Decimal("1")))
    assert only_task(engine, 2).status == "open"


def test_an_approved_review_is_corrected_and_audited(drifting: Engine) -> None:
    """needs_review -> corrected through the core when a person approves it with --by and --note."""
    engine = drifting
    summary = run_reconciliation(engine, RunOptions(max_drift_ratio=Decimal("1")))
    task = only_task(engine, 3)
    assert task.status == "needs_review" and summary.needs_review == 1
    resolved = resolve_task(engine, task.id, "correct", "alice", "checked against the bank statement")
    after = resolved.task
    assert after.status == "corrected"
    assert cached_balance(engine, 3) == ledger_sum(engine, 3) == Decimal("100.00")
    assert [event["action"] for event in after.events] == ["open", "needs_review", "correct"]
    approval = after.events[-1]
    assert (approval["by"], approval["note"], approval["from"]) == ("alice", "checked against the bank statement",
                                                                    "needs_review")
    assert approval["values"]["approved_by"] == "alice"
    assert (approval["values"]["old_balance"], approval["values"]["new_balance"]) == ("350.00", "100.00")
    assert after.resolution["approved_by"] == "alice" and after.resolution["policy"] == "ledger"
    assert approval["at"]


def test_dismissing_by_hand_changes_nothing_but_the_task(drifting: Engine) -> None:
    """dismiss closes the task with who and why; the balance and the ledger stay as they are."""
    engine = drifting
    run_reconciliation(engine, DRY)
    task = only_task(engine, 2)
    entries = entry_count(engine)
    resolved = resolve_task(engine, task.id, "dismiss", "bob", "known timing difference")
    assert resolved.task.status == "dismissed" and resolved.correction is None
    assert resolved.task.events[-1]["by"] == "bob"
    assert cached_balance(engine, 2) == Decimal("104.00") and entry_count(engine) == entries


def test_a_resolved_task_never_changes_again(drifting: Engine) -> None:
    """Resolving a corrected or dismissed task raises TaskStateError and writes nothing."""
    engine = drifting
    run_reconciliation(engine, DRY)
    task = only_task(engine, 2)
    resolve_task(engine, task.id, "dismiss", "bob", "fine")
    with pytest.raises(TaskStateError, match="already dismissed"):
        resolve_task(engine, task.id, "correct", "bob", "changed my mind")
    assert cached_balance(engine, 2) == Decimal("104.00")


def test_resolve_refuses_bad_input(drifting: Engine) -> None:
    """Unknown task, unknown action, empty --by or --note, unknown policy: named errors, nothing written."""
    engine = drifting
    run_reconciliation(engine, DRY)
    task = only_task(engine, 2)
    with pytest.raises(TaskNotFoundError):
        resolve_task(engine, 999, "dismiss", "bob", "x")
    for action, by, note, policy in (("fix", "bob", "x", "ledger"), ("dismiss", " ", "x", "ledger"),
                                     ("dismiss", "bob", "", "ledger"), ("correct", "bob", "x", "cash")):
        with pytest.raises(InvalidOperationError):
            resolve_task(engine, task.id, action, by, note, policy)
    assert only_task(engine, 2).status == "open"


def test_list_tasks_filters_by_status_and_run(drifting: Engine) -> None:
    """list_tasks(status=..., run_id=...) returns just those tasks."""
    engine = drifting
    summary = run_reconciliation(engine, RunOptions(max_drift_ratio=Decimal("1")))
    with engine.connect() as conn:
        assert [t.customer_id for t in list_tasks(conn, status="needs_review")] == [3]
        assert [t.customer_id for t in list_tasks(conn, status="corrected")] == [2]
        assert {t.customer_id for t in list_tasks(conn, run_id=summary.run_id)} == {2, 3}
        assert list_tasks(conn, run_id=summary.run_id + 1) == []
        with pytest.raises(InvalidOperationError):
            list_tasks(conn, status="closed")


def test_two_runs_staging_the_same_customer_at_once_open_one_task(drifting: Engine) -> None:
    """Two runs opening tasks concurrently (threads released together) still leave one task per customer."""
    engine = drifting
    run_ids = [pipeline.start_run(engine, DRY, "manual") for _ in range(2)]
    for run_id in run_ids:
        for chunk in pipeline.plan_run(engine, run_id):
            pipeline.compare_run_chunk(engine, run_id, chunk["chunk_index"])
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def open_tasks(run_id: int) -> None:
        try:
            barrier.wait()
            pipeline.open_run_tasks(engine, run_id)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_tasks, args=(run_id,)) for run_id in run_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    with engine.connect() as conn:
        rows = conn.execute(select(tasks_table.c.customer_id, func.count()).group_by(tasks_table.c.customer_id)).all()
        assert sorted((row[0], row[1]) for row in rows) == [(2, 1), (3, 1)]
        assert get_task(conn, only_task(engine, 2).id).status == "open"
