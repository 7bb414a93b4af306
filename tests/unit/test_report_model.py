"""The report model is a pure function of fetched rows: exact tie-outs, aging on a fixed clock, counts."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from reconciler.report_model import (
    AGING_LABELS,
    BookTotals,
    CauseGroup,
    ChangeCounts,
    DriftLine,
    HistoryPoint,
    OutcomeGroup,
    ReportInput,
    RunFacts,
    UnresolvedTask,
    age_bucket,
    build_aging,
    build_report_model,
    build_tie_out_book,
    build_tie_out_found,
    describe_scope,
)
from reconciler.report_sections import QualityLine

NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
D = Decimal


def _run(**overrides: object) -> RunFacts:
    values: dict[str, object] = {
        "run_id": 7, "status": "succeeded", "trigger": "cli", "started_at": NOW - dt.timedelta(minutes=5),
        "finished_at": NOW - dt.timedelta(minutes=1), "customers_checked": 1000, "drift_count": 6,
        "total_abs_drift": D("471.26"), "params": {"tolerance": "0.01", "policy": "ledger"}, "outcome": {},
    }
    values.update(overrides)
    return RunFacts(**values)  # type: ignore[arg-type]


OUTCOMES = (
    OutcomeGroup("corrected", "ledger", 3, D("1000.00"), D("950.50"), D("49.50"), D("60.10")),
    OutcomeGroup("corrected", "balance", 1, D("10.00"), D("20.01"), D("-10.01"), D("10.01")),
    OutcomeGroup("needs_review", None, 1, D("5400.00"), D("5000.00"), D("400.00"), D("400.00")),
    OutcomeGroup("open", None, 1, D("0.00"), D("1.15"), D("-1.15"), D("1.15")),
)


def _input(**overrides: object) -> ReportInput:
    values: dict[str, object] = {
        "run": _run(), "outcomes": OUTCOMES,
        "top_drifts": (DriftLine(5, D("5400.00"), D("5000.00"), D("400.00"), "missing_entry", "entry 9 missing",
                                 11, "needs_review"),),
        "causes": (CauseGroup("missing_entry", 2, D("398.85"), D("401.15")),
                   CauseGroup(None, 4, D("39.49"), D("70.11"))),
        "unresolved": (), "changes": ChangeCounts(6, 2, 4, 1), "history": (), "quality": (), "now": NOW,
        "book": BookTotals(1000, D("1000000.00"), D("999601.30"), 2, D("398.85")),
    }
    values.update(overrides)
    return ReportInput(**values)  # type: ignore[arg-type]


def test_tie_out_lines_sum_exactly() -> None:
    """cached - ledger = net drift; net drift - corrections - dismissals = remaining = sum of its details."""
    lines = {line.key: line for line in build_tie_out_found(OUTCOMES)}
    assert lines["cached"].amount - lines["ledger"].amount == lines["net_drift"].amount == D("438.34")
    corrected = lines["corrected_ledger"].amount + lines["corrected_balance"].amount
    assert corrected == D("-39.49")
    assert lines["net_drift"].amount + corrected == lines["remaining"].amount == D("398.85")
    assert lines["remaining_needs_review"].amount + lines["remaining_open"].amount == lines["remaining"].amount
    assert lines["remaining"].customers == 2 and lines["net_drift"].customers == 6
    assert "dismissed" not in lines and "remaining_no_task" not in lines


def test_tie_out_with_dismissed_and_without_tasks_still_sums() -> None:
    """Dismissed drift and findings without a task (a halted run) keep the tie-out exact."""
    groups = (*OUTCOMES, OutcomeGroup("dismissed", None, 1, D("3.00"), D("1.00"), D("2.00"), D("2.00")),
              OutcomeGroup("no_task", None, 2, D("7.77"), D("0.00"), D("7.77"), D("7.77")))
    lines = {line.key: line for line in build_tie_out_found(groups)}
    removed = sum((line.amount for key, line in lines.items() if key.startswith(("corrected_", "dismissed"))), D(0))
    assert lines["net_drift"].amount + removed == lines["remaining"].amount
    details = sum((line.amount for key, line in lines.items() if key.startswith("remaining_")), D(0))
    assert details == lines["remaining"].amount == D("406.62")


def test_book_tie_out_splits_the_difference_exactly() -> None:
    """Total cached - total ledger = unresolved customers' drift + everything else, to the cent."""
    lines = {line.key: line for line in build_tie_out_book(BookTotals(10, D("100.00"), D("90.99"), 1, D("9.00")))}
    assert lines["book_difference"].amount == D("9.01")
    assert lines["book_unresolved"].amount + lines["book_other"].amount == lines["book_difference"].amount
    assert lines["book_other"].amount == D("0.01")
    assert build_tie_out_book(None) == ()


@pytest.mark.parametrize(("age", "bucket"), [
    (dt.timedelta(0), 0), (dt.timedelta(hours=23, minutes=59), 0), (dt.timedelta(days=1), 1),
    (dt.timedelta(days=6, hours=23), 1), (dt.timedelta(days=7), 2), (dt.timedelta(days=29, hours=23), 2),
    (dt.timedelta(days=30), 3), (dt.timedelta(days=400), 3),
])
def test_age_bucket_boundaries(age: dt.timedelta, bucket: int) -> None:
    """0-1 is [0, 1) day, 1-7 is [1, 7), 7-30 is [7, 30), then 30+; a boundary age goes to the older bucket."""
    assert age_bucket(NOW - age, NOW) == bucket


def test_aging_counts_and_amounts_on_a_fixed_clock() -> None:
    """Each unresolved task lands in one bucket by its age at ``now``; amounts are exact."""
    tasks = (
        UnresolvedTask(1, 1, "open", D("1.10"), NOW - dt.timedelta(hours=2)),
        UnresolvedTask(2, 2, "needs_review", D("-200.00"), NOW - dt.timedelta(days=3)),
        UnresolvedTask(3, 3, "open", D("0.05"), NOW - dt.timedelta(days=3, hours=5)),
        UnresolvedTask(4, 4, "needs_review", D("999.99"), NOW - dt.timedelta(days=45)),
    )
    buckets = build_aging(tasks, NOW)
    assert [b.label for b in buckets] == list(AGING_LABELS)
    assert [b.tasks for b in buckets] == [1, 2, 0, 1]
    assert [b.needs_review for b in buckets] == [0, 1, 0, 1]
    assert buckets[1].abs_drift == D("200.05") and buckets[1].net_drift == D("-199.95")
    assert buckets[3].abs_drift == D("999.99")


def test_summary_counts_and_policies() -> None:
    """The summary counts every finding once and splits corrections by policy."""
    model = build_report_model(_input())
    s = model.summary
    assert (s.drifting, s.corrected, s.needs_review, s.open, s.dismissed, s.without_task) == (6, 4, 1, 1, 0, 0)
    assert s.total_abs_drift == D("471.26") and s.net_drift == D("438.34")
    assert {p.policy: p.customers for p in s.corrected_by_policy} == {"balance": 1, "ledger": 3}
    assert s.corrected_abs_drift == D("70.11")
    assert not s.halted and model.warnings == ()


def test_warnings_when_the_run_record_disagrees_with_its_findings() -> None:
    """A run whose recorded totals differ from its findings is flagged, never silently trusted."""
    model = build_report_model(_input(run=_run(drift_count=5, total_abs_drift=D("1.00"))))
    assert len(model.warnings) == 2
    assert "5 drifting" in model.warnings[0]


def test_halted_run_is_reported_as_halted_with_its_reason() -> None:
    """A halted run says so, with the reason from its outcome."""
    model = build_report_model(_input(run=_run(status="halted", outcome={"halted_reason": "60% drift"})))
    assert model.summary.halted and model.summary.halted_reason == "60% drift"


def test_causes_are_sorted_by_amount_with_shares() -> None:
    """Causes are listed largest first with their share of the absolute drift."""
    causes = build_report_model(_input()).causes
    assert [c.cause for c in causes] == ["missing_entry", "unexplained"]
    assert causes[0].share_percent == D("85.1") and causes[1].share_percent == D("14.9")


def test_quality_counts_split_failures_by_severity() -> None:
    """A failed critical expectation fails quality; a failed warning does not."""
    lines = (QualityLine("s", "a", True), QualityLine("s", "b", False, {"severity": "warning", "observed": 3}),
             QualityLine("s", "c", False, {"severity": "critical", "observed": 1}))
    quality = build_report_model(_input(quality=lines)).quality
    assert (quality.evaluated, quality.failed, quality.warnings, quality.success) == (3, 1, 1, False)
    assert [q.success for q in quality.lines] == [False, False, True]  # failures first


def test_history_is_ordered_by_run() -> None:
    """Trend points come out in run order whatever order they were fetched in."""
    points = tuple(HistoryPoint(i, NOW, "succeeded", i, D(i), 0, None) for i in (3, 1, 2))
    assert [p.run_id for p in build_report_model(_input(history=points)).history] == [1, 2, 3]


def test_json_has_exact_decimal_strings() -> None:
    """summary.json carries amounts as strings with two places, and the CSV totals it promises."""
    data = build_report_model(_input()).to_json()
    assert data["total_abs_drift"] == "471.26" and data["net_drift"] == "438.34"
    assert data["csv"] == {"file": "tasks.csv", "rows": 6, "drift_total": "438.34", "abs_drift_total": "471.26"}
    assert data["generated_at"] == NOW.isoformat()


@pytest.mark.parametrize(("params", "text"), [
    ({}, "all customers"), ({"from_id": 5, "to_id": 9}, "customers 5 to 9"), ({"from_id": 5}, "customers from 5"),
    ({"customer_ids": [1, 2]}, "customers 1, 2"),
    ({"customer_ids": list(range(12))}, "customers 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 and 2 more"),
])
def test_scope_is_described_in_words(params: dict[str, object], text: str) -> None:
    """The run's scope reads plainly from its parameters."""
    assert describe_scope(params) == text


def test_compared_tie_out_splits_the_difference_exactly_and_says_which_snapshot() -> None:
    """The as-compared tie-out: difference = found + within tolerance, exactly; absent until every chunk has totals."""
    import datetime as dt

    from reconciler.report_model import ComparedTotals, build_tie_out_compared

    at = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    totals = ComparedTotals(3, 3, 3, 30, D("1000.03"), D("990.00"), 2, D("10.02"), at, at, "10:12:", "11:11:")
    lines = {line.key: line for line in build_tie_out_compared(totals)}
    assert lines["compared_difference"].amount == D("10.03")
    assert lines["compared_found"].amount + lines["compared_within_tolerance"].amount == D("10.03")
    assert lines["compared_within_tolerance"].amount == D("0.01")
    assert "3 chunk(s)" in totals.describe_snapshot() and "10:12:" in totals.describe_snapshot()
    partial = ComparedTotals(3, 3, 2, 20, D("1.00"), D("1.00"), 0, D("0.00"))
    assert build_tie_out_compared(partial) == () and build_tie_out_compared(None) == ()


def test_busy_customers_are_listed_longest_busy_first_and_called_out() -> None:
    """The run's busy customers reach the model and summary.json, longest busy first, with the lock holder;
    three runs in a row or more is called out."""
    busy = [{"customer_id": 9, "task_id": 3, "runs_in_a_row": 1, "lockers": []},
            {"customer_id": 8, "task_id": 2, "runs_in_a_row": 3,
             "lockers": [{"pid": 77, "application_name": "billing", "state": "idle in transaction"}]}]
    model = build_report_model(_input(run=_run(outcome={"busy": busy})))
    assert [(b.customer_id, b.runs_in_a_row, b.called_out) for b in model.busy] == [(8, 3, True), (9, 1, False)]
    assert model.busy[0].lockers == "pid 77 (billing)"
    assert model.to_json()["busy"][1]["lockers"] == "a session that could not be identified"  # type: ignore[index]
