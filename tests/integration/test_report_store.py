"""One report store for many workers (RECONCILER_REPORTS_URL): the quality step's Data Docs and the report
step's files end up under one ``run-N/`` whichever machine wrote them, on fsspec's memory file system (a
stand-in for s3://, gs://) and on a shared local folder reached by two workers with different homes."""

from __future__ import annotations

import uuid
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from reconciler import report_store
from reconciler.pipeline import RunOptions, run_reconciliation
from tests.factories import make_customer, post_entry, set_cached_balance

REPORT_FILES = {"report.html", "tasks.csv", "summary.json", "data_docs/index.html"}


@pytest.fixture
def ledger(engine: Engine) -> Engine:
    """Six customers, one drifting by 7.50."""
    for customer in range(1, 7):
        make_customer(engine, customer)
        post_entry(engine, customer, Decimal("20.00"))
        set_cached_balance(engine, customer, Decimal("20.00"))
    set_cached_balance(engine, 4, Decimal("27.50"))
    return engine


def _stored_docs(engine: Engine, run_id: int) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(text("select details ->> 'data_docs' from reconciler.quality_results "
                                     "where run_id = :r"), {"r": run_id}).scalars())


def test_a_run_files_its_report_and_data_docs_in_a_memory_store(ledger: Engine, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """With RECONCILER_REPORTS_URL=memory://..., the run's report and Data Docs are in the store (nothing in the
    local home), the run's report_path is the store URL, and the report links to the Data Docs beside it."""
    base = f"memory://reports-{uuid.uuid4().hex}"
    monkeypatch.setenv("RECONCILER_REPORTS_URL", base)
    monkeypatch.setenv("RECONCILER_HOME", str(tmp_path / "home"))
    summary = run_reconciliation(ledger, RunOptions(max_drift_ratio=Decimal("1")))
    location = f"{base}/run-{summary.run_id}"
    assert summary.report_path == location
    files = set(report_store.list_files(location))
    assert files >= REPORT_FILES, files
    assert any(name.startswith("data_docs/static/vendor/bootstrap/") for name in files)
    html = report_store.read_text(f"{location}/report.html")
    assert 'href="data_docs/index.html"' in html and "27.50" in html
    assert _stored_docs(ledger, summary.run_id) == {f"{location}/data_docs"}
    assert not (report_store.reports_dir() / f"run-{summary.run_id}").exists()


def test_two_workers_with_different_homes_share_one_local_store(ledger: Engine, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """check_quality on worker A and build_report on worker B (each its own RECONCILER_HOME) with one
    file:// base: one folder holds everything; without the setting each worker keeps its part at home."""
    from reconciler import pipeline

    shared = tmp_path / "shared-reports"

    def run_split(reports_url: str | None) -> int:
        if reports_url is None:
            monkeypatch.delenv("RECONCILER_REPORTS_URL", raising=False)
        else:
            monkeypatch.setenv("RECONCILER_REPORTS_URL", reports_url)
        monkeypatch.setenv("RECONCILER_HOME", str(tmp_path / "worker-a"))
        run_id = pipeline.start_run(ledger, RunOptions(max_drift_ratio=Decimal("1")), "manual")
        for chunk in pipeline.plan_run(ledger, run_id):
            pipeline.compare_run_chunk(ledger, run_id, chunk["chunk_index"])
        pipeline.check_quality(ledger, run_id)
        pipeline.open_run_tasks(ledger, run_id)
        pipeline.apply_run_corrections(ledger, run_id)
        pipeline.finish_run(ledger, run_id)
        monkeypatch.setenv("RECONCILER_HOME", str(tmp_path / "worker-b"))
        pipeline.build_report(ledger, run_id)
        return run_id

    run_id = run_split(shared.as_uri())
    assert set(report_store.list_files(str(shared / f"run-{run_id}"))) >= REPORT_FILES
    assert 'href="data_docs/index.html"' in (shared / f"run-{run_id}" / "report.html").read_text()
    assert pipeline.load_summary(ledger, run_id).report_path == str(shared / f"run-{run_id}")

    apart = run_split(None)
    assert (tmp_path / "worker-a" / "reports" / f"run-{apart}" / "data_docs" / "index.html").exists()
    assert (tmp_path / "worker-b" / "reports" / f"run-{apart}" / "report.html").exists()
    assert not (tmp_path / "worker-a" / "reports" / f"run-{apart}" / "report.html").exists()


def test_report_store_locations() -> None:
    """Locations join with '/', local paths and file:// URLs are local, memory:// is not; a missing backend is
    a clear error naming the setting."""
    location = report_store.run_location(7, "data_docs", base="s3://bucket/reports/")
    assert location == "s3://bucket/reports/run-7/data_docs"
    assert report_store.is_local("/srv/reports") and report_store.is_local("file:///srv/reports")
    assert not report_store.is_local("memory://x")
    from reconciler.errors import InvalidOperationError

    with pytest.raises(InvalidOperationError, match="RECONCILER_REPORTS_URL"):
        report_store.is_local("nosuchfs://bucket/reports")
