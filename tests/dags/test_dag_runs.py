"""Real DAG runs with ``dag.test()`` against a test ledger database: planted drift is found and corrected with
one mapped compare per chunk, a second run changes nothing, a failing task marks the run failed, and a halted
run alerts through the notifier to a local webhook."""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from urllib.parse import quote

import pytest
from sqlalchemy import Engine, func, insert, select, text
from sqlalchemy.engine import URL

from reconciler.schema import runs, tasks
from tests.factories import cached_balance, entry_count, ledger_sum, seed_thirty_customers
from tests.fix_hitl import Responder
from tests.fix_http import SMTPServer, Webhook, http_connection, smtp_connection

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
    monkeypatch.setenv("AIRFLOW_CONN_RECONCILER_ALERTS", http_connection(webhook.url))
    return webhook


class StatsRecorder:
    """What Airflow's Stats sent, as ``(kind, stat, value, tags)``."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, object, dict[str, Any]]] = []

    def mine(self) -> list[tuple[str, str, object, dict[str, Any]]]:
        return [item for item in self.sent if item[1].startswith("reconciler.")]


@pytest.fixture
def stats(monkeypatch: pytest.MonkeyPatch) -> StatsRecorder:
    """Airflow's Stats (airflow.sdk.observability.stats) sending to a recorder (in place of StatsD or
    OpenTelemetry) for this test."""
    from airflow.sdk._shared.observability.metrics import stats as stats_module
    from airflow.sdk._shared.observability.metrics.base_stats_logger import NoStatsLogger

    recorder = StatsRecorder()

    class Backend(NoStatsLogger):  # type: ignore[misc]
        def incr(self, stat: str, count: int = 1, rate: float = 1, *, tags: Any = None) -> None:
            recorder.sent.append(("incr", stat, count, dict(tags or {})))

        def gauge(self, stat: str, value: float, rate: float = 1, delta: bool = False, *, tags: Any = None) -> None:
            recorder.sent.append(("gauge", stat, value, dict(tags or {})))

        def timing(self, stat: str, dt: Any, *, tags: Any = None) -> None:
            recorder.sent.append(("timing", stat, dt, dict(tags or {})))

    monkeypatch.setattr(stats_module, "_backend", Backend())
    return recorder


def _asset_events(uri: str) -> list[dict[str, Any]]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.execute(select(AssetEvent.extra, AssetEvent.source_task_id, AssetEvent.source_run_id)
                               .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
                               .where(AssetModel.uri == uri).order_by(AssetEvent.id)).all()
    return [{"extra": dict(extra or {}), "task": task, "run": run} for extra, task, run in rows]


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
                                                                          webhook: Webhook, stats: StatsRecorder,
                                                                          reviewer: Responder) -> None:
    """A manual run with chunk_size 10 maps 3 compare tasks, corrects the two small drifts, sends the big one
    to review, records trigger 'manual' and, its drift being above alert_drift_above, alerts once yet stays
    green; it emits one "balances reconciled" asset event with its figures and report, and its metrics through
    Airflow's Stats. A second run opens no duplicate task and corrects nothing twice."""
    before = len(_asset_events("reconciler://ledger/balances"))
    reviewer.answer("erin", "Reject", note="not before the bank confirms")
    reviewer.answer("erin", "Reject", note="still waiting for the bank")
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
    assert webhook.received[0]["json"]["links"]["report"] == run["outcome"]["report_path"]

    events = _asset_events("reconciler://ledger/balances")[before:]
    assert [(e["task"], e["run"]) for e in events] == [("build_report", dag_run.run_id)]
    assert events[0]["extra"] == {
        "run_id": run["id"], "status": "succeeded", "mode": "full", "customers_checked": CUSTOMERS, "drift_count": 3,
        "total_abs_drift": "267.34", "corrected": 2, "needs_review": 1, "open": 0,
        "report": run["outcome"]["report_path"]}
    sent = {(kind, stat): value for kind, stat, value, tags in stats.mine()}
    assert {stat for _, stat in sent} == {
        "reconciler.run.drift_count", "reconciler.run.total_abs_drift", "reconciler.run.corrected",
        "reconciler.run.needs_review", "reconciler.run.duration", "reconciler.run.finished",
        "reconciler.run.corrections"}
    assert sent[("gauge", "reconciler.run.total_abs_drift")] == 267.34
    assert sent[("gauge", "reconciler.run.drift_count")] == 3 and sent[("incr", "reconciler.run.corrections")] == 2
    assert all(tags == {"status": "succeeded"} for *_, tags in stats.mine())

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


def test_failed_mapped_chunks_send_one_alert_per_dag_run(dagbag: Any, ledger: Engine, webhook: Webhook,
                                                         smtp_server: SMTPServer,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Two of three mapped compare_chunk tasks fail (the database refuses their findings): the DAG run fails,
    the reconciler run is failed, and exactly ONE alert goes to the webhook and ONE mail to the SMTP server,
    with the run summary, the DAG run's link and the failed task's log link."""
    monkeypatch.setenv("AIRFLOW_CONN_RECONCILER_SMTP", smtp_connection(smtp_server))
    with ledger.begin() as conn:
        conn.execute(text("""
            create function refuse_finding() returns trigger language plpgsql as $$
            begin if new.customer_id in (5, 29) then raise exception 'finding refused by test'; end if;
            return new; end $$;
            create trigger refuse_finding before insert on reconciler.findings
            for each row execute function refuse_finding();"""))
    dag_run = _run(dagbag, {"chunk_size": 10, "max_drift_ratio": "1"})
    states = _states(dag_run)
    assert dag_run.state == "failed"
    assert sorted(i for (task, i), state in states.items() if task == "compare_chunk" and state == "failed") == [0, 2]
    assert states[("send_alerts", -1)] == "failed"
    [run] = _run_rows(ledger)
    assert run["status"] == "failed" and "compare_chunk" in run["error"]
    assert len(webhook.received) == 1, webhook.received
    payload = webhook.received[0]["json"]
    assert payload["kind"] == "failed" and payload["run_id"] == run["id"]
    assert "customers checked" in payload["text"]
    assert payload["links"]["run"].endswith(f"/dags/ledger_reconciliation/runs/{quote(dag_run.run_id, safe='')}")
    assert "/tasks/compare_chunk/mapped/" in payload["links"]["log"]
    assert len(smtp_server.messages) == 1
    assert "Subject: [reconciler] Reconciliation run" in smtp_server.messages[0]


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


def _events(engine: Engine, customer: int) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        resolution = conn.execute(select(tasks.c.resolution).where(tasks.c.customer_id == customer)
                                  .order_by(tasks.c.id.desc()).limit(1)).scalar_one()
    return list(resolution["events"])


def test_four_eyes_approval_in_the_airflow_ui(dagbag: Any, ledger: Engine, webhook: Webhook, reviewer: Responder,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The run waits at review_corrections, whose form lists the task above the limit (customer, drift, cause).
    The run's own trigger approving is refused: nothing corrected, the refusal audited, a 'review' alert. In the
    next run, with RECONCILER_APPROVERS naming the trigger and erin, only erin is assigned: mallory's answer is
    refused by the API (403), erin approves the selected task and it is corrected through the core with erin as
    approver in its audit trail."""
    conf = {"chunk_size": 10, "max_drift_ratio": "1", "alert_drift_above": None}
    reviewer.answer("dag_test", "Approve all", note="my own run")
    first = _run(dagbag, conf)
    assert first.state == "success", _states(first)
    form = reviewer.seen[0]
    assert "approve 1 correction" in form["subject"] and "| 29 |" in form["body"] and "250.00" in form["body"]
    assert form["options"] == ["Approve all", "Approve selected", "Reject"] and form["assigned_users"] == []
    assert cached_balance(ledger, 29) - ledger_sum(ledger, 29) == PLANTED[29]
    assert _events(ledger, 29)[-1]["action"] == "approval_refused" and _events(ledger, 29)[-1]["by"] == "dag_test"
    [alert] = [a["json"] for a in webhook.received]
    assert alert["kind"] == "review" and "refused" in alert["text"] and "nothing was corrected" in alert["text"]

    monkeypatch.setenv("RECONCILER_APPROVERS", "dag_test, erin")
    [task_29] = [row["id"] for row in _task_rows(ledger) if row["customer_id"] == 29]
    reviewer.answer("mallory", "Approve all")
    reviewer.answer("erin", "Approve selected", task_ids=[task_29], note="bank confirmed the missing credit")
    second = _run(dagbag, conf)
    assert second.state == "success", _states(second)
    assert reviewer.seen[1]["assigned_users"] == [{"id": "erin", "name": "erin"}]
    assert reviewer.errors and "mallory" in reviewer.errors[0]
    assert cached_balance(ledger, 29) == ledger_sum(ledger, 29)
    status = {row["customer_id"]: row["status"] for row in _task_rows(ledger)}
    assert status[29] == "corrected"
    correct = _events(ledger, 29)[-1]
    assert (correct["action"], correct["by"], correct["values"]["approved_by"]) == ("correct", "erin", "erin")
    assert correct["note"] == "bank confirmed the missing credit"
    assert len(webhook.received) == 1


@pytest.fixture
def as_scheduled(monkeypatch: pytest.MonkeyPatch) -> None:
    """``dag.test()`` starts a timetable (scheduled) DAG run with no triggering user, as the scheduler does at
    02:00, instead of its manual run by "dag_test"."""
    from airflow.models import dagrun
    from airflow.utils.state import DagRunState
    from airflow.utils.types import DagRunTriggeredByType, DagRunType

    def scheduled_dagrun(*, dag: Any, logical_date: Any, data_interval: Any, run_after: Any, conf: Any,
                         start_date: Any, session: Any, **_: Any) -> Any:
        return dag.create_dagrun(
            run_id=dagrun.DagRun.generate_run_id(run_type=DagRunType.SCHEDULED, logical_date=logical_date,
                                                 run_after=run_after),
            logical_date=logical_date, data_interval=data_interval, run_after=run_after, conf=conf,
            run_type=DagRunType.SCHEDULED, state=DagRunState.RUNNING, triggered_by=DagRunTriggeredByType.TIMETABLE,
            triggering_user_name=None, start_date=start_date or logical_date, session=session)

    monkeypatch.setattr(dagrun, "get_or_create_dagrun", scheduled_dagrun)


def test_scheduled_run_review_is_assigned_to_every_configured_approver(dagbag: Any, ledger: Engine,
                                                                       webhook: Webhook, reviewer: Responder,
                                                                       as_scheduled: None,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A scheduled run has no trigger user, so its review form is assigned to the whole approver list; someone
    outside the list is refused (403) and any listed reviewer may approve: the task is corrected with them as
    approver in its audit trail."""
    monkeypatch.setenv("RECONCILER_APPROVERS", "erin, frank")
    reviewer.answer("mallory", "Approve all")
    reviewer.answer("frank", "Approve all", note="nightly review: bank confirmed")
    dag_run = _run(dagbag, {"chunk_size": 10, "max_drift_ratio": "1", "alert_drift_above": None})
    assert dag_run.state == "success", _states(dag_run)
    assert str(getattr(dag_run.run_type, "value", dag_run.run_type)) == "scheduled"
    [run] = _run_rows(ledger)
    assert run["trigger"] == "scheduled" and not run["outcome"].get("triggered_by")
    [form] = reviewer.seen
    assert form["assigned_users"] == [{"id": "erin", "name": "erin"}, {"id": "frank", "name": "frank"}]
    assert reviewer.errors and "mallory" in reviewer.errors[0]
    assert cached_balance(ledger, 29) == ledger_sum(ledger, 29)
    assert {row["customer_id"]: row["status"] for row in _task_rows(ledger)} == {
        5: "corrected", 17: "corrected", 29: "corrected"}
    correct = _events(ledger, 29)[-1]
    assert (correct["action"], correct["by"], correct["values"]["approved_by"]) == ("correct", "frank", "frank")
    assert correct["note"] == "nightly review: bank confirmed"


def test_unanswered_review_corrects_nothing_and_alerts(dagbag: Any, ledger: Engine, webhook: Webhook,
                                                       reviewer: Responder) -> None:
    """When nobody answers before the response timeout (the scheduler's sweep takes the default), nothing is
    corrected, each waiting task records the timeout, the run succeeds and the alert says nothing was
    corrected."""
    reviewer.answer(None)
    dag_run = _run(dagbag, {"chunk_size": 10, "max_drift_ratio": "1", "alert_drift_above": None})
    assert dag_run.state == "success", _states(dag_run)
    assert cached_balance(ledger, 29) - ledger_sum(ledger, 29) == PLANTED[29]
    assert _events(ledger, 29)[-1]["action"] == "review_timeout"
    [alert] = [a["json"] for a in webhook.received]
    assert alert["kind"] == "review" and "no answer within the approval timeout" in alert["text"]
    assert alert["details"]["review"]["timed_out"] is True


def test_dag_mode_param_manual_runs_default_full_and_incremental_follows_the_feed(dagbag: Any, ledger: Engine,
                                                                                 webhook: Webhook) -> None:
    """A manual run without the mode Param is full and sets the verified point (the guard observing); one
    with mode incremental then compares only the customer touched since, and records both modes and why."""
    from reconciler.guard import install

    install(ledger, "observe")
    first = _run(dagbag, {"chunk_size": 10, "max_drift_ratio": "1", "dry_run": True})
    assert first.state == "success"
    with ledger.begin() as conn:
        conn.execute(text("update customers set balance = balance + 3 where id = 8"))
    second = _run(dagbag, {"chunk_size": 10, "max_drift_ratio": "1", "dry_run": True, "mode": "incremental"})
    assert second.state == "success", _states(second)
    rows = _run_rows(ledger)
    assert [(r["mode"], r["customers_checked"]) for r in rows] == [("full", CUSTOMERS), ("incremental", 4)]
    assert rows[0]["mode_reason"] == "full requested" and rows[1]["verified_from"] == rows[0]["verified_to"]
