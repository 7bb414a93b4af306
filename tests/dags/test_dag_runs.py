"""Real DAG runs with ``dag.test()`` against a test ledger database: planted drift is found and corrected with
one mapped compare per chunk, a second run changes nothing, a failing task marks the run failed, and a halted
run alerts through the notifier to a local webhook."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, func, insert, select, text
from sqlalchemy.engine import URL

from reconciler.schema import runs, tasks
from tests.factories import cached_balance, entry_count, ledger_sum, seed_thirty_customers
from tests.fix_http import Webhook

pytestmark = pytest.mark.slow

CUSTOMERS = 30
#: customer -> drift planted on top of an honest balance; 250.00 is above the auto-correct limit (100.00).
PLANTED = {5: Decimal("12.34"), 17: Decimal("-5.00"), 29: Decimal("250.00")}


@pytest.fixture
def ledger(engine: Engine, db_url: URL, monkeypatch: pytest.MonkeyPatch) -> Engine:
    """This test's seeded ledger, reachable from tasks through the Airflow connection ``ledger_db``."""
    seed_thirty_customers(engine, PLANTED)
    monkeypatch.setenv("AIRFLOW_CONN_LEDGER_DB", db_url.set(drivername="postgresql")
                       .render_as_string(hide_password=False))
    return engine


@pytest.fixture
def webhook(webhook: Webhook, monkeypatch: pytest.MonkeyPatch) -> Webhook:
    """The local webhook (tests/fix_http.py), configured as the Airflow connection ``reconciler_alerts``."""
    monkeypatch.setenv("AIRFLOW_CONN_RECONCILER_ALERTS", webhook.url)
    return webhook


def _run(dagbag: Any, conf: dict[str, object] | None = None, dag_id: str = "ledger_reconciliation") -> Any:
    dag = dagbag.dags[dag_id]
    return dag.test(run_conf=conf or {})


def _states(dag_run: Any) -> dict[tuple[str, int], str]:
    return {(ti.task_id, ti.map_index): str(ti.state) for ti in dag_run.get_task_instances()}


def _run_rows(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(runs).order_by(runs.c.id)).mappings())


def _task_rows(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(tasks).order_by(tasks.c.id)).mappings())


def test_dag_run_finds_and_corrects_planted_drift_then_reruns_idempotently(dagbag: Any, ledger: Engine,
                                                                          webhook: Webhook) -> None:
    """A manual run with chunk_size 10 maps 3 compare tasks, corrects the two small drifts, sends the big one
    to review, records trigger 'manual' and, its drift being above alert_drift_above, alerts once yet stays
    green; a second run opens no duplicate task and corrects nothing twice."""
    conf = {"chunk_size": 10, "max_drift_ratio": "0.2", "alert_drift_above": "100.00"}
    dag_run = _run(dagbag, conf)
    states = _states(dag_run)
    assert dag_run.state == "success", states
    assert sorted(i for (task, i) in states if task == "compare_chunk") == [0, 1, 2]
    assert all(state == "success" for state in states.values()), states

    first = _run_rows(ledger)
    assert len(first) == 1
    run = first[0]
    assert (run["status"], run["trigger"], run["customers_checked"], run["drift_count"]) == (
        "succeeded", "manual", CUSTOMERS, 3)
    assert str(run["run_key"]).startswith("airflow:ledger_reconciliation:")
    assert run["total_abs_drift"] == sum(abs(d) for d in PLANTED.values())
    assert run["params"]["chunk_size"] == 10
    by_customer = {row["customer_id"]: row for row in _task_rows(ledger)}
    assert {c: row["status"] for c, row in by_customer.items()} == {5: "corrected", 17: "corrected",
                                                                       29: "needs_review"}
    for customer in (5, 17):
        assert cached_balance(ledger, customer) == ledger_sum(ledger, customer)
    assert cached_balance(ledger, 29) - ledger_sum(ledger, 29) == PLANTED[29]
    entries_after_first = entry_count(ledger)

    assert [(a["json"]["kind"], a["json"]["details"]["total_abs_drift"]) for a in webhook.received] == [
        ("drift", "267.34")]

    second = _run(dagbag, conf)
    assert second.state == "success", _states(second)
    runs_now = _run_rows(ledger)
    assert [r["status"] for r in runs_now] == ["succeeded", "succeeded"]
    assert runs_now[1]["drift_count"] == 1
    again = _task_rows(ledger)
    assert len(again) == 3 and [r["status"] for r in again] == ["corrected", "corrected", "needs_review"]
    assert entry_count(ledger) == entries_after_first
    with ledger.connect() as conn:
        unresolved = conn.execute(select(func.count()).select_from(tasks)
                                  .where(tasks.c.status.in_(("open", "needs_review")))).scalar_one()
    assert unresolved == 1
    assert [a["json"]["details"]["total_abs_drift"] for a in webhook.received] == ["267.34", "250.00"]


def test_failing_task_marks_the_run_failed(dagbag: Any, ledger: Engine) -> None:
    """When plan_chunks cannot write its plan (the database refuses), the DAG run fails and the failure
    callback marks the reconciler run failed with the task and the reason; nothing is corrected."""
    with ledger.begin() as conn:
        conn.execute(text("""
            create function refuse_plan() returns trigger language plpgsql as $$
            begin raise exception 'planning refused by test'; end $$;
            create trigger refuse_plan before insert on reconciler.run_chunks
            for each row execute function refuse_plan();"""))
    dag_run = _run(dagbag, {"chunk_size": 10})
    states = _states(dag_run)
    assert dag_run.state == "failed"
    assert states[("start_run", -1)] == "success" and states[("plan_chunks", -1)] == "failed"
    assert states[("finish_run", -1)] == "upstream_failed"
    [run] = _run_rows(ledger)
    assert run["status"] == "failed" and run["finished_at"] is not None
    assert "plan_chunks" in run["error"] and "planning refused by test" in run["error"]
    assert _task_rows(ledger) == []
    assert cached_balance(ledger, 5) - ledger_sum(ledger, 5) == PLANTED[5]


def test_halted_run_alerts_the_webhook_and_turns_red(dagbag: Any, ledger: Engine, webhook: Webhook) -> None:
    """With max_drift_ratio 0.05 and 3 of 30 customers drifting (10%), corrections halt: nothing is corrected,
    the run is recorded halted (not failed), exactly one 'halted' alert reaches the webhook, the DAG run fails."""
    dag_run = _run(dagbag, {"max_drift_ratio": "0.05"})
    states = _states(dag_run)
    assert dag_run.state == "failed"
    assert states[("finish_run", -1)] == "success" and states[("send_alerts", -1)] == "failed"
    [run] = _run_rows(ledger)
    assert run["status"] == "halted"
    for customer, drift in PLANTED.items():
        assert cached_balance(ledger, customer) - ledger_sum(ledger, customer) == drift
    assert len(webhook.received) == 1, webhook.received
    alert = webhook.received[0]
    assert alert["path"] == "/alerts/finance"
    assert alert["json"]["kind"] == "halted" and alert["json"]["run_id"] == run["id"]
    assert "halted" in alert["json"]["text"] and alert["json"]["details"]["drift_count"] == 3


def test_watchdog_alerts_when_no_run_succeeded(dagbag: Any, ledger: Engine, webhook: Webhook) -> None:
    """On a ledger with no successful run the watchdog sends one 'stale' alert and fails; once a run has
    succeeded within the last 26 hours it is green and silent."""
    stale = _run(dagbag, dag_id="ledger_reconciliation_watchdog")
    assert stale.state == "failed"
    assert [a["json"]["kind"] for a in webhook.received] == ["stale"]
    with ledger.begin() as conn:
        conn.execute(insert(runs).values(status="succeeded", trigger="scheduled", params={},
                                         started_at=func.now() - text("interval '2 hours'"),
                                         finished_at=func.now() - text("interval '1 hour'")))
    fresh = _run(dagbag, dag_id="ledger_reconciliation_watchdog")
    assert fresh.state == "success"
    assert len(webhook.received) == 1
