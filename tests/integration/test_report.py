"""The finance report against a real PostgreSQL: its numbers equal what the database holds, the CSV totals
equal the summary's, and trends, aging and new/persisting/resolved follow a scripted history of runs."""

from __future__ import annotations

import csv
import json
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from typer.testing import CliRunner

from reconciler.errors import RunNotFoundError
from reconciler.report import build_run_report
from tests.factories import NOW, History, chained_customer, recorded_run, scripted_history

D = Decimal


@pytest.fixture
def history(engine: Engine) -> History:
    return scripted_history(engine)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_report_numbers_equal_the_database(engine: Engine, history: History, tmp_path: Path) -> None:
    """summary.json's counts and amounts are what SQL over findings, tasks and the ledger says."""
    run_id = history.runs[2]
    folder = build_run_report(engine, run_id, tmp_path, now=NOW, book_now=True)
    summary = json.loads((folder / "summary.json").read_text())
    with engine.connect() as conn:
        found = conn.execute(text("select count(*), sum(drift), sum(abs(drift)) from reconciler.findings "
                                  "where run_id = :r"), {"r": run_id}).one()
        cached = conn.execute(text("select sum(balance) from customers")).scalar_one()
        ledger = conn.execute(text("select sum(amount) from customer_ledger_entries")).scalar_one()
    assert summary["drift_count"] == found[0] == 3
    assert D(summary["net_drift"]) == found[1] == D("-142.73")
    assert D(summary["total_abs_drift"]) == found[2] == D("357.27")
    assert (summary["corrected"], summary["needs_review"], summary["open"]) == (0, 1, 2)
    book = {line["key"]: line for line in summary["tie_out"]["book_now"]}
    assert D(book["book_cached"]["amount"]) == cached
    assert D(book["book_ledger"]["amount"]) == ledger
    assert D(book["book_difference"]["amount"]) == cached - ledger == D("-142.73")
    # Customers 2, 3, 5 and 6 have unresolved tasks; 2 no longer drifts.
    assert D(book["book_unresolved"]["amount"]) == D("-142.73") and book["book_unresolved"]["customers"] == 4
    assert D(book["book_other"]["amount"]) == D("0.00")
    found_lines = {line["key"]: D(line["amount"]) for line in summary["tie_out"]["as_found"]}
    assert found_lines["cached"] - found_lines["ledger"] == found_lines["net_drift"] == found_lines["remaining"]
    assert summary["quality"]["evaluated"] == 2 and summary["quality"]["warnings"] == 1
    assert summary["quality"]["success"] is True
    assert summary["warnings"] == []


def test_csv_totals_reconcile_with_the_summary(engine: Engine, history: History, tmp_path: Path) -> None:
    """tasks.csv has one row per finding; its drift and abs_drift columns sum exactly to the summary's."""
    folder = build_run_report(engine, history.runs[2], tmp_path, now=NOW)
    summary = json.loads((folder / "summary.json").read_text())
    rows = _read_csv(folder / "tasks.csv")
    assert len(rows) == summary["csv"]["rows"] == summary["drift_count"]
    assert sum((D(r["drift"]) for r in rows), D(0)) == D(summary["net_drift"]) == D(summary["csv"]["drift_total"])
    assert sum((D(r["abs_drift"]) for r in rows), D(0)) == D(summary["total_abs_drift"])
    by_customer = {int(r["customer_id"]): r for r in rows}
    assert by_customer[3]["task_id"] == str(history.tasks["t3"])
    assert by_customer[3]["task_status"] == "needs_review"
    assert by_customer[5]["task_id"] == str(history.tasks["t5b"])  # the new task, not the dismissed one
    assert by_customer[6]["explanation"] == "why 6"


def test_aging_changes_and_trends_follow_the_scripted_history(engine: Engine, history: History,
                                                              tmp_path: Path) -> None:
    """Aging buckets by age at a fixed now; new/persisting/resolved against run 2; trend points per run with
    the median hours to resolve of the tasks each run opened."""
    folder = build_run_report(engine, history.runs[2], tmp_path, now=NOW)
    summary = json.loads((folder / "summary.json").read_text())
    aging = {label: bucket["tasks"] for label, bucket in summary["aging"].items()}
    assert aging == {"0-1 days": 2, "1-7 days": 0, "7-30 days": 2, "30+ days": 0}
    assert D(summary["aging"]["7-30 days"]["abs_drift"]) == D("103.50")
    assert summary["aging"]["7-30 days"]["needs_review"] == 1
    assert summary["changes"] == {"previous_run_id": history.runs[1], "new": 1, "persisting": 2, "resolved": 2}
    html = (folder / "report.html").read_text()
    assert html.count("<svg") == 3
    from reconciler.report import fetch_history

    with engine.connect() as conn:
        points = fetch_history(conn, history.runs[2], 30)
    assert [p.run_id for p in points] == list(history.runs)
    assert [p.drift_count for p in points] == [3, 4, 3]
    assert [p.resolved_tasks for p in points] == [1, 2, 0]
    assert points[0].median_hours_to_resolve == pytest.approx(2.0)
    assert points[1].median_hours_to_resolve == pytest.approx((0.5 + 24.0) / 2)
    assert points[2].median_hours_to_resolve is None


def test_report_of_an_earlier_run_and_of_a_clean_run(engine: Engine, history: History, tmp_path: Path) -> None:
    """Run 1's report ties out its own findings (one corrected by policy ledger); a run without drift reports
    zeros and still renders."""
    folder = build_run_report(engine, history.runs[0], tmp_path / "r1", now=NOW)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["corrected_by_policy"] == {"ledger": {"customers": 1, "net_drift": "5.00", "abs_drift": "5.00"}}
    lines = {line["key"]: D(line["amount"]) for line in summary["tie_out"]["as_found"]}
    assert lines["net_drift"] == D("102.50")
    assert lines["net_drift"] + lines["corrected_ledger"] == lines["remaining"] == D("97.50")
    assert summary["changes"]["previous_run_id"] is None and summary["changes"]["new"] == 3
    clean = recorded_run(engine, NOW, 0, "0.00")
    folder = build_run_report(engine, clean, tmp_path / "clean", now=NOW)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["drift_count"] == 0 and summary["total_abs_drift"] == "0.00"
    assert summary["changes"]["resolved"] == 3
    assert _read_csv(folder / "tasks.csv") == []
    assert "No customer drifted beyond the tolerance." in (folder / "report.html").read_text()


def test_unknown_run_is_a_clear_error(engine: Engine, tmp_path: Path) -> None:
    """Asking for a run that does not exist raises RunNotFoundError naming it."""
    with pytest.raises(RunNotFoundError, match="run 42 does not exist"):
        build_run_report(engine, 42, tmp_path)


def test_report_cli_prints_the_html_path(engine: Engine, history: History, database_env: object,
                                         tmp_path: Path) -> None:
    """`reconciler report` reports the latest run by default and prints the HTML file's path."""
    from reconciler.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["report", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    path = Path(result.stdout.strip())
    assert path == tmp_path / "out" / "report.html" and path.exists()
    assert f"run {history.runs[2]}" in path.read_text()
    missing = runner.invoke(app, ["report", "--run", "999"])
    assert missing.exit_code == 2 and "run 999 does not exist" in missing.output


@pytest.mark.slow
def test_end_to_end_run_then_report(engine: Engine, tmp_path: Path) -> None:
    """A real run (compare, quality, tasks, corrections, report) leaves a report whose figures equal the run's
    summary, with the quality results and a working Data Docs link inside the report folder."""
    from reconciler.pipeline import RunOptions, run_reconciliation
    from tests.factories import set_cached_balance

    for customer in range(1, 11):
        chained_customer(engine, customer, ["100.00", "-25.00"])
    set_cached_balance(engine, 3, "80.00")     # +5.00: corrected automatically
    set_cached_balance(engine, 7, "500.00")    # +425.00: above the auto-correct limit, needs review
    summary = run_reconciliation(engine, RunOptions(max_drift_ratio=D("1")), report_dir=tmp_path / "report")
    assert summary.report_path is not None
    folder = Path(summary.report_path)
    data = json.loads((folder / "summary.json").read_text())
    assert (data["drift_count"], data["corrected"], data["needs_review"]) == (
        summary.drift_count, summary.corrected, summary.needs_review) == (2, 1, 1)
    assert D(data["total_abs_drift"]) == summary.total_abs_drift == D("430.00")
    assert data["customers_checked"] == summary.customers_checked == 10
    assert data["quality"]["evaluated"] >= 10
    assert data["quality"]["data_docs"] == "data_docs/index.html"
    assert (folder / "data_docs" / "index.html").exists()
    rows = _read_csv(folder / "tasks.csv")
    assert {int(r["customer_id"]): r["task_status"] for r in rows} == {3: "corrected", 7: "needs_review"}
    assert {r["policy"] for r in rows if r["task_status"] == "corrected"} == {"ledger"}
    # The scope's tie-out comes from the comparison statements' own totals, in their snapshots, exactly.
    compared = {line["key"]: line for line in data["tie_out"]["as_compared"]}
    assert D(compared["compared_cached"]["amount"]) == D("1180.00")  # 10 x 75.00, + 5.00, + 425.00
    assert D(compared["compared_ledger"]["amount"]) == D("750.00")
    assert compared["compared_cached"]["customers"] == 10
    assert D(compared["compared_difference"]["amount"]) == D("430.00")
    assert D(compared["compared_found"]["amount"]) == D("430.00") and compared["compared_found"]["customers"] == 2
    assert D(compared["compared_within_tolerance"]["amount"]) == D("0.00")
    assert "as compared by this run" in data["tie_out"]["as_compared_snapshot"]
    assert "snapshots" in data["tie_out"]["as_compared_snapshot"]
    assert data["tie_out"]["book_now"] == []  # the second pass over the ledger is optional now
    assert 'id="tie-compared_difference"' in (folder / "report.html").read_text()
