"""The quality worker: a child runs the run's checks beside the comparison, with the same results as in-process."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from reconciler.pipeline import RunOptions, run_reconciliation
from reconciler.quality_worker import QualityWorker
from tests.factories import make_customer, post_entry, set_cached_balance


def _ledger(engine: Engine) -> None:
    for customer in range(1, 6):
        make_customer(engine, customer, "10.00")
        post_entry(engine, customer, "10.00", kind="deposit", balance_after="10.00")
    set_cached_balance(engine, 2, "12.00")


def _stored(engine: Engine, run_id: int) -> dict[str, bool]:
    with engine.connect() as conn:
        rows = conn.execute(text("select expectation, success from reconciler.quality_results where run_id = :r"),
                            {"r": run_id}).all()
    return {r.expectation: r.success for r in rows}


def test_a_run_with_the_worker_stores_what_the_step_in_process_stores(engine: Engine, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker on and off, the run records the same quality outcome and the same result rows."""
    _ledger(engine)
    options = RunOptions(dry_run=True, max_drift_ratio=Decimal("1"))
    monkeypatch.setenv("RECONCILER_QUALITY_WORKER", "on")
    with_worker = run_reconciliation(engine, options, report_dir=tmp_path / "a")
    monkeypatch.setenv("RECONCILER_QUALITY_WORKER", "off")
    in_process = run_reconciliation(engine, options, report_dir=tmp_path / "b")
    first, second = _stored(engine, with_worker.run_id), _stored(engine, in_process.run_id)
    assert first == second and len(first) >= 10
    assert first["balance_matches_ledger"] is False  # the run's own drift, seen after the comparison
    assert (tmp_path / "a" / "data_docs" / "index.html").exists()


def test_a_worker_that_cannot_answer_leaves_the_step_to_this_process(engine: Engine,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that died answers None (the caller runs the step itself); one for another run is not asked."""
    monkeypatch.setenv("RECONCILER_QUALITY_WORKER", "on")
    worker = QualityWorker.start(engine.url.render_as_string(hide_password=False), 1)
    assert worker is not None
    worker._process.kill()
    assert worker.check(1) is None
    other = QualityWorker.start(engine.url.render_as_string(hide_password=False), 1)
    assert other is not None and other.check(2) is None


def test_auto_starts_the_worker_only_where_it_finds_a_free_core(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto: a remote database always gets the worker; a local one only with cores to spare; on/off force it."""
    from reconciler import quality_worker

    monkeypatch.delenv("RECONCILER_QUALITY_WORKER", raising=False)
    monkeypatch.setattr(quality_worker.os, "cpu_count", lambda: 2)
    remote = "postgresql+psycopg://app:secret@db.internal:5432/ledger"
    local = "postgresql+psycopg://postgres@localhost/ledger?host=/tmp/pg"
    assert quality_worker.worker_enabled(remote, 2) and not quality_worker.worker_enabled(local, 2)
    assert not quality_worker.worker_enabled("postgresql+psycopg://postgres@127.0.0.1:5432/ledger", 2)
    monkeypatch.setattr(quality_worker.os, "cpu_count", lambda: 8)
    assert quality_worker.worker_enabled(local, 2)
    monkeypatch.setenv("RECONCILER_QUALITY_WORKER", "off")
    assert not quality_worker.worker_enabled(remote, 2)
    monkeypatch.setenv("RECONCILER_QUALITY_WORKER", "on")
    monkeypatch.setattr(quality_worker.os, "cpu_count", lambda: 2)
    assert quality_worker.worker_enabled(local, 2)
