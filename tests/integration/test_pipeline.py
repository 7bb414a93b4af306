"""A reconciliation run end to end on a real PostgreSQL: guardrails, policies, reruns, concurrent payments."""

from __future__ import annotations

import threading
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, text

from reconciler import pipeline
from reconciler.balances import BalanceManager
from reconciler.errors import RunStateError
from reconciler.pipeline import RunOptions, run_reconciliation
from reconciler.quality import load_suites
from reconciler.schema import findings, ledger_entries, run_chunks, tasks
from tests.factories import cached_balance, entry_count, ledger_customer, ledger_sum, make_customer, set_cached_balance

NO_HALT = Decimal("1")


pytestmark = pytest.mark.usefixtures("quick_quality_and_report")


def task_rows(engine: Engine) -> list[dict[str, object]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(tasks).order_by(tasks.c.id)).mappings()]


def run_status(engine: Engine, run_id: int) -> str:
    with engine.connect() as conn:
        return str(conn.execute(text("select status from reconciler.runs where id = :r"), {"r": run_id}).scalar_one())


@pytest.fixture
def small_ledger(engine: Engine) -> Engine:
    """Ten customers; 3 drifts +5.00, 7 drifts -150.00 (beyond the default limit), the rest clean."""
    for customer_id in range(1, 11):
        drift = {3: "5.00", 7: "-150.00"}.get(customer_id, "0.00")
        ledger_customer(engine, customer_id, ("100.00", "-30.00", "12.34"), drift)
    return engine


def test_a_run_corrects_within_the_limit_and_sends_larger_drifts_to_review(small_ledger: Engine,
                                                                          real_steps: None) -> None:
    """Policy ledger (real quality and report steps): the 5.00 drift is corrected (balance = ledger sum, no
    entry), the 150.00 one needs review; quality outcome and report folder are recorded on the run."""
    engine = small_ledger
    before_entries = entry_count(engine)
    summary = run_reconciliation(engine, RunOptions(chunk_size=3, max_drift_ratio=NO_HALT))
    assert (summary.status, summary.customers_checked, summary.drift_count) == ("succeeded", 10, 2)
    assert (summary.corrected, summary.needs_review, summary.open) == (1, 1, 0)
    assert summary.total_abs_drift == Decimal("155.00")
    assert summary.exit_code == 1  # the reviewed drift remains
    assert cached_balance(engine, 3) == ledger_sum(engine, 3) == Decimal("82.34")
    assert cached_balance(engine, 7) == Decimal("-67.66")  # untouched
    assert entry_count(engine) == before_entries
    by_customer = {row["customer_id"]: row for row in task_rows(engine)}
    assert set(by_customer) == {3, 7}
    corrected = by_customer[3]
    assert corrected["status"] == "corrected" and corrected["resolved_at"] is not None
    resolution = corrected["resolution"]
    assert isinstance(resolution, dict)
    assert (resolution["old_balance"], resolution["new_balance"], resolution["policy"]) == ("87.34", "82.34", "ledger")
    assert [event["action"] for event in resolution["events"]] == ["open", "correct"]
    assert resolution["events"][-1]["by"] == f"run {summary.run_id}"
    assert by_customer[7]["status"] == "needs_review"
    assert summary.report_path is not None and Path(summary.report_path).is_dir()
    quality = summary.details["quality"]
    expectations = sum(len(suite.data["expectations"]) for suite in load_suites())
    assert (quality["evaluated"], quality["failed"]) == (expectations, 0)  # every expectation ran, none critical
    assert quality["warnings"] >= 1  # the drift found is reported as a warning (balance_matches_ledger)


def test_policy_balance_posts_an_adjusting_entry_equal_to_the_drift(small_ledger: Engine) -> None:
    """Policy balance: one reconciliation_adjustment entry of exactly the drift; the balance is unchanged."""
    engine = small_ledger
    summary = run_reconciliation(engine, RunOptions(policy="balance", max_drift_ratio=NO_HALT))
    assert summary.corrected == 1
    assert cached_balance(engine, 3) == Decimal("87.34") == ledger_sum(engine, 3)
    with engine.connect() as conn:
        adjustments = conn.execute(select(ledger_entries.c.customer_id, ledger_entries.c.amount)
                                   .where(ledger_entries.c.kind == "reconciliation_adjustment")).all()
    assert [(row.customer_id, row.amount) for row in adjustments] == [(3, Decimal("5.00"))]
    (task,) = [row for row in task_rows(engine) if row["customer_id"] == 3]
    assert task["correction_entry_id"] is not None and task["status"] == "corrected"


def test_dry_run_records_the_run_and_tasks_but_changes_no_balance_and_no_entry(small_ledger: Engine) -> None:
    """--dry-run: run row and open tasks recorded, every balance and entry exactly as before, exit 1."""
    engine = small_ledger
    balances = {cid: cached_balance(engine, cid) for cid in range(1, 11)}
    entries = entry_count(engine)
    summary = run_reconciliation(engine, RunOptions(dry_run=True, max_drift_ratio=NO_HALT))
    assert summary.status == "succeeded" and summary.dry_run and summary.corrected == 0
    assert (summary.open, summary.needs_review) == (1, 1)
    assert summary.exit_code == 1
    assert {cid: cached_balance(engine, cid) for cid in range(1, 11)} == balances
    assert entry_count(engine) == entries
    assert {row["customer_id"]: row["status"] for row in task_rows(engine)} == {3: "open", 7: "needs_review"}
    assert summary.details["corrections"]["would_correct"] == 1


def test_auto_correct_off_leaves_tasks_open(small_ledger: Engine) -> None:
    """--no-auto-correct: nothing corrected, the task within the limit stays open."""
    engine = small_ledger
    summary = run_reconciliation(engine, RunOptions(auto_correct=False, max_drift_ratio=NO_HALT))
    assert (summary.corrected, summary.open, summary.needs_review) == (0, 1, 1)
    assert cached_balance(engine, 3) == Decimal("87.34")


def test_auto_correct_limit_decides_between_correction_and_review(small_ledger: Engine) -> None:
    """A limit of 1 sends both drifts to review; a later run with a limit of 200 corrects both."""
    engine = small_ledger
    summary = run_reconciliation(engine, RunOptions(auto_correct_limit=Decimal("1.00"), max_drift_ratio=NO_HALT))
    assert (summary.corrected, summary.needs_review) == (0, 2)
    # each run applies its own guardrails: a later run whose limit covers them corrects both
    again = run_reconciliation(engine, RunOptions(auto_correct_limit=Decimal("200.00"), max_drift_ratio=NO_HALT))
    assert (again.corrected, again.needs_review, again.exit_code) == (2, 0, 0)
    assert cached_balance(engine, 7) == ledger_sum(engine, 7)


def test_max_drift_ratio_halts_the_run_and_corrects_nothing(small_ledger: Engine) -> None:
    """2 of 10 drifting is above 0.05: the run is halted (exit 3), tasks recorded, nothing corrected."""
    engine = small_ledger
    entries = entry_count(engine)
    summary = run_reconciliation(engine, RunOptions())
    assert summary.status == "halted" and summary.exit_code == 3
    assert summary.halted_reason is not None and "2 of 10" in summary.halted_reason
    assert summary.corrected == 0 and summary.drift_count == 2
    assert cached_balance(engine, 3) == Decimal("87.34") and entry_count(engine) == entries
    assert {row["customer_id"]: row["status"] for row in task_rows(engine)} == {3: "open", 7: "open"}


def test_max_drift_ratio_one_disables_the_halt(engine: Engine) -> None:
    """Every customer drifting still corrects them all when the ratio is 1."""
    for customer_id in (1, 2, 3):
        ledger_customer(engine, customer_id, ("10.00",), "1.00")
    summary = run_reconciliation(engine, RunOptions(max_drift_ratio=Decimal("1")))
    assert summary.status == "succeeded" and summary.corrected == 3 and summary.exit_code == 0
    assert all(cached_balance(engine, cid) == Decimal("10.00") for cid in (1, 2, 3))


def test_a_rerun_opens_no_duplicate_and_corrects_nothing_twice(small_ledger: Engine) -> None:
    """Running again: one task per customer, no second correction, no new entry, no new reconciliation."""
    engine = small_ledger
    options = RunOptions(policy="balance", max_drift_ratio=NO_HALT)
    first = run_reconciliation(engine, options)
    entries = entry_count(engine)
    tasks_after_first = task_rows(engine)
    second = run_reconciliation(engine, options)
    assert first.corrected == 1 and second.corrected == 0
    assert second.drift_count == 1  # only the reviewed one still drifts
    assert entry_count(engine) == entries
    after = task_rows(engine)
    assert [row["id"] for row in after] == [row["id"] for row in tasks_after_first]
    reviewed = next(row for row in after if row["customer_id"] == 7)
    assert reviewed["last_seen_run_id"] == second.run_id and reviewed["run_id"] == first.run_id
    with engine.connect() as conn:
        assert conn.execute(text("select count(*) from reconciler.balance_reconciliations")).scalar_one() == 1


def test_every_step_can_be_retried_with_the_same_result(small_ledger: Engine) -> None:
    """Step by step (as an orchestrator runs them), each step twice: same chunks, findings, tasks, corrections."""
    engine = small_ledger
    run_id = pipeline.start_run(engine, RunOptions(chunk_size=4, max_drift_ratio=NO_HALT), "manual")
    plan = pipeline.plan_run(engine, run_id)
    assert pipeline.plan_run(engine, run_id) == plan and len(plan) == 3
    for chunk in plan:
        first = pipeline.compare_run_chunk(engine, run_id, chunk["chunk_index"])
        assert pipeline.compare_run_chunk(engine, run_id, chunk["chunk_index"]) == first
    pipeline.check_quality(engine, run_id)
    opened = pipeline.open_run_tasks(engine, run_id)
    assert pipeline.open_run_tasks(engine, run_id) == opened == {"opened": 2, "updated": 0, "dismissed": 0}
    corrected = pipeline.apply_run_corrections(engine, run_id)
    again = pipeline.apply_run_corrections(engine, run_id)
    assert (corrected["corrected"], again["corrected"]) == (1, 0)
    pipeline.build_report(engine, run_id)
    summary = pipeline.finish_run(engine, run_id)
    assert pipeline.finish_run(engine, run_id) == summary
    assert summary.status == "succeeded" and summary.customers_checked == 10
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(findings)).scalar_one() == 2
        assert conn.execute(select(func.count()).select_from(run_chunks)
                            .where(run_chunks.c.status == "compared")).scalar_one() == 3
    assert pipeline.load_summary(engine, run_id) == summary


def test_a_range_run_checks_only_its_customers(small_ledger: Engine) -> None:
    """--from-id/--to-id and --customer-ids restrict what is checked (and so what is corrected)."""
    engine = small_ledger
    summary = run_reconciliation(engine, RunOptions(from_id=4, to_id=10, max_drift_ratio=NO_HALT))
    assert (summary.customers_checked, summary.drift_count) == (7, 1)
    assert cached_balance(engine, 3) == Decimal("87.34")
    by_ids = run_reconciliation(engine, RunOptions(customer_ids=(3, 5), max_drift_ratio=NO_HALT))
    assert (by_ids.customers_checked, by_ids.drift_count, by_ids.corrected) == (2, 1, 1)


def test_an_empty_ledger_gives_a_clean_run(engine: Engine) -> None:
    """No customers at all: the run succeeds with nothing checked and exit code 0."""
    summary = run_reconciliation(engine, RunOptions())
    assert (summary.status, summary.customers_checked, summary.exit_code) == ("succeeded", 0, 0)


def test_progress_is_reported_per_chunk(small_ledger: Engine) -> None:
    """progress(done, total, customers) is called from 0 up to every chunk with the customers checked."""
    calls: list[tuple[int, int, int]] = []
    run_reconciliation(small_ledger, RunOptions(chunk_size=2, dry_run=True, max_drift_ratio=NO_HALT),
                       progress=lambda *args: calls.append(args))
    assert calls[0] == (0, 5, 0) and calls[-1] == (5, 5, 10)
    assert [done for done, _, _ in calls] == list(range(6))


def test_a_step_of_a_failed_run_is_refused(small_ledger: Engine) -> None:
    """Once a run is failed (e.g. found dead by another), none of its steps does anything more."""
    engine = small_ledger
    run_id = pipeline.start_run(engine, RunOptions(max_drift_ratio=NO_HALT), "manual")
    pipeline.plan_run(engine, run_id)
    pipeline.mark_run_failed(engine, run_id, "test: operator stopped it")
    with pytest.raises(RunStateError, match="failed"):
        pipeline.compare_run_chunk(engine, run_id, 0)
    with pytest.raises(RunStateError):
        pipeline.apply_run_corrections(engine, run_id)
    assert cached_balance(engine, 3) == Decimal("87.34")


def test_a_retried_keyed_start_returns_the_running_run_and_a_failed_key_starts_anew(small_ledger: Engine) -> None:
    """start_run with the same key returns the run already running (no second run row); once that run has
    failed, the same key starts a new run."""
    options = RunOptions(max_drift_ratio=NO_HALT)
    first = pipeline.start_run(small_ledger, options, "manual", key="airflow:dag:run-1")
    assert pipeline.start_run(small_ledger, options, "manual", key="airflow:dag:run-1") == first
    other = pipeline.start_run(small_ledger, options, "manual", key="airflow:dag:run-2")
    assert other != first
    with small_ledger.connect() as conn:
        assert conn.execute(text("select count(*) from reconciler.runs")).scalar_one() == 2
    pipeline.mark_run_failed(small_ledger, first, "test: the DAG run failed and is cleared")
    again = pipeline.start_run(small_ledger, options, "manual", key="airflow:dag:run-1")
    assert again not in (first, other)


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["ledger", "balance"])
def test_payments_during_a_run_cause_no_false_task_and_no_wrong_correction(engine: Engine, policy: str) -> None:
    """Threads pay and transfer through the core on the same customers during the whole run: only the planted
    drifts get tasks, each is corrected by exactly its drift, and balance == SUM(ledger) for everyone after."""
    customers = range(1, 121)
    planted = {5: "3.00", 17: "-2.50", 33: "7.77", 64: "1.11", 99: "-9.99", 120: "4.00"}
    core = BalanceManager(engine, allow_negative=True)
    for customer_id in customers:
        make_customer(engine, customer_id)
        core.update_balance(customer_id, "500.00", kind="deposit")
    for customer_id, drift in planted.items():
        set_cached_balance(engine, customer_id, cached_balance(engine, customer_id) + Decimal(drift))

    stop = threading.Event()
    started = threading.Barrier(5)
    errors: list[BaseException] = []
    operations = [0] * 4

    def hammer(worker: int) -> None:
        try:
            started.wait()
            step = 0
            while not stop.is_set():
                step += 1
                a = customers[(worker * 37 + step * 13) % len(customers)]
                b = customers[(worker * 11 + step * 7 + 1) % len(customers)]
                if step % 3 == 0 and a != b:
                    core.transfer(a, b, "1.25")
                else:
                    core.update_balance(a, "2.00" if step % 2 else "1.00", "add" if step % 2 else "subtract",
                                        kind="payment")
                # always touch a planted customer too, so corrections race with payments
                core.update_balance(list(planted)[(worker + step) % len(planted)], "0.50", kind="payment")
                operations[worker] += 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    started.wait()
    try:
        summary = run_reconciliation(engine, RunOptions(chunk_size=10, policy=policy, max_drift_ratio=NO_HALT,
                                                        workers=2))
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not errors, errors
    assert all(count > 0 for count in operations)
    assert summary.status == "succeeded" and summary.drift_count == len(planted)
    by_customer = {row["customer_id"]: row for row in task_rows(engine)}
    assert set(by_customer) == set(planted)  # no false task
    for customer_id, drift in planted.items():
        task = by_customer[customer_id]
        resolution = task["resolution"]
        assert isinstance(resolution, dict)
        if task["status"] == "corrected":
            assert Decimal(str(resolution["drift"])) == Decimal(drift)  # corrected by exactly the drift
        else:  # a payment holding the row lock makes it busy (or a timeout defers it): open, nothing written
            assert task["status"] == "open" and resolution["events"][-1]["action"] in ("busy", "defer")
    assert summary.corrected + sum(1 for t in by_customer.values() if t["status"] == "open") == len(planted)
    with engine.connect() as conn:
        mismatched = conn.execute(text("""
            select c.id from customers c
            where c.balance <> (select coalesce(sum(amount), 0) from customer_ledger_entries e
                                where e.customer_id = c.id)
        """)).scalars().all()
    assert set(mismatched) <= {cid for cid, t in by_customer.items() if t["status"] == "open"}
    if summary.corrected == len(planted):
        assert mismatched == []
