"""A real DAG run while a company service holds row locks on two drifting customers: no task fails or waits
on the service; the locked customers are skipped as busy and their tasks stay open."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.engine import URL

from reconciler.schema import runs
from tests.dags.conftest import airflow_uri
from tests.factories import cached_balance, ledger_sum, make_honest_customers, set_cached_balance
from tests.fix_locks import SERVICE_APPLICATION, LockWaitWatcher, hold_row_locks

pytestmark = pytest.mark.slow

PLANTED = {3: Decimal("4.00"), 8: Decimal("-2.00"), 9: Decimal("1.25")}


def test_dag_run_with_locked_customers_succeeds_and_marks_them_busy(dagbag: Any, engine: Engine, db_url: URL,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """With 8 held FOR UPDATE and 9 FOR NO KEY UPDATE, every task instance succeeds, nobody waits on the
    service, 3 is corrected and 8 and 9 stay open, listed busy on the run with the service's pid."""
    make_honest_customers(engine, range(1, 31))
    for customer_id, drift in PLANTED.items():
        set_cached_balance(engine, customer_id, Decimal("50.00") + drift)
    monkeypatch.setenv("AIRFLOW_CONN_LEDGER_DB", airflow_uri(db_url))
    with hold_row_locks(db_url, {8: "FOR UPDATE", 9: "FOR NO KEY UPDATE"}) as holder, \
            LockWaitWatcher(db_url, holder.pid) as watcher:
        dag_run = dagbag.dags["ledger_reconciliation"].test(run_conf={"chunk_size": 10, "max_drift_ratio": "1"})
    states = {(ti.task_id, ti.map_index): str(ti.state) for ti in dag_run.get_task_instances()}
    assert dag_run.state == "success", states
    # No drift above the limit: the four-eyes step has nothing to ask and is skipped.
    assert states.pop(("review_corrections", -1)) == "skipped"
    assert all(state == "success" for state in states.values()), states
    assert watcher.waiters == []
    with engine.connect() as conn:
        run = conn.execute(select(runs)).mappings().one()
        statuses = dict(conn.execute(text("select customer_id, status from reconciler.tasks")).all())
    assert run["status"] == "succeeded"
    assert [(b["customer_id"], b["lockers"][0]["pid"], b["lockers"][0]["application_name"])
            for b in run["outcome"]["busy"]] == [(8, holder.pid, SERVICE_APPLICATION), (9, holder.pid,
                                                                                         SERVICE_APPLICATION)]
    assert statuses == {3: "corrected", 8: "open", 9: "open"}
    assert cached_balance(engine, 3) == ledger_sum(engine, 3)
