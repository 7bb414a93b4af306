"""Comparisons may read from a replica: lag delays a finding, never causes a wrong write."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.engine import URL

from reconciler import pipeline
from reconciler.db import make_engine
from reconciler.pipeline import RunOptions
from reconciler.schema import findings, tasks
from tests.factories import cached_balance, ledger_sum, make_drifting_customer, set_cached_balance
from tests.fix_db import create_database, drop_database

pytestmark = pytest.mark.usefixtures("quick_quality_and_report")


@pytest.fixture
def replica(server_url: URL, template_url: URL) -> Iterator[Engine]:
    """A second migrated database standing in for a lagging read replica of the test's ledger."""
    url = create_database(server_url, template_url)
    eng = make_engine(url)
    yield eng
    eng.dispose()
    drop_database(url)


def test_a_lagging_replica_delays_findings_but_corrections_follow_the_primary(engine: Engine,
                                                                              replica: Engine) -> None:
    """Compare reads the replica (it sees customer 4 drifting, which the primary already fixed, and not yet
    customer 3's new drift); the correction re-verifies on the primary, so customer 4 is left alone and its
    task dismissed, and customer 3 waits for a run that sees it."""
    for database in (engine, replica):
        for customer in range(1, 7):
            make_drifting_customer(database, customer, total="100.00")
    set_cached_balance(engine, 3, "105.00")   # new drift on the primary, not replicated yet
    set_cached_balance(replica, 4, "90.00")   # old drift the primary has since corrected

    run_id = pipeline.start_run(engine, RunOptions(max_drift_ratio=Decimal("1"), chunk_size=2), "manual")
    for chunk in pipeline.plan_run(engine, run_id):
        pipeline.compare_run_chunk(engine, run_id, chunk["chunk_index"], read_engine=replica)
    pipeline.open_run_tasks(engine, run_id)
    pipeline.apply_run_corrections(engine, run_id)
    summary = pipeline.finish_run(engine, run_id)

    with engine.connect() as conn:
        found = conn.execute(select(findings.c.customer_id).where(findings.c.run_id == run_id)).scalars().all()
        task_rows = conn.execute(select(tasks.c.customer_id, tasks.c.status)).all()
    assert found == [4]
    assert summary.corrected == 0
    assert [(row.customer_id, row.status) for row in task_rows] == [(4, "dismissed")]
    assert cached_balance(engine, 4) == Decimal("100.00") == ledger_sum(engine, 4)
    assert cached_balance(engine, 3) == Decimal("105.00")  # found by a later run, not corrected blindly

    later = pipeline.run_reconciliation(engine, RunOptions(max_drift_ratio=Decimal("1")))
    assert (later.drift_count, later.corrected) == (1, 1)
    assert cached_balance(engine, 3) == Decimal("100.00")


def test_quality_and_report_wait_for_a_read_side_that_lags(engine: Engine, replica: Engine) -> None:
    """The read-only steps after comparing (quality, report) read the run on the read side: one that does not
    show the run as the primary does yet is waited for, then named as lagging (a retry is safe)."""
    import datetime as dt

    from reconciler.errors import ReadDatabaseLagError
    from reconciler.pipeline.steps import wait_for_read_side

    make_drifting_customer(engine, 1, drift="2.00")
    run_id = pipeline.start_run(engine, RunOptions(), "manual")
    with pytest.raises(ReadDatabaseLagError, match="lag"):
        wait_for_read_side(engine, replica, run_id, timeout=dt.timedelta(seconds=0.3))
    wait_for_read_side(engine, engine, run_id)  # the primary itself: nothing to wait for
