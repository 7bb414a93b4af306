"""The DAG with least privilege: ``ledger_db`` logs in as an operator, ``ledger_db_replica`` as a reader, and every
read-only step reads there; no password in any connection appears in the task logs, XComs, stored rows or
the report."""

from __future__ import annotations

import json
import logging
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.engine import URL

from reconciler.roles import OPERATOR, READER, apply_roles
from reconciler.schema import runs, tasks
from tests.factories import cached_balance, ledger_sum, make_customer, post_entry, set_cached_balance
from tests.fix_http import Webhook
from tests.fix_roles import MakeLogin
from tests.fix_secrets import HOOK_PASSWORD, READ_PASSWORD, WRITE_PASSWORD, leaks

pytestmark = pytest.mark.slow
CUSTOMERS = 12


def _airflow_uri(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def test_read_only_steps_run_on_the_replica_login_and_no_password_leaks(
        dagbag: Any, engine: Engine, make_login: MakeLogin, webhook: Webhook, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    """The replica login (a reconciler_reader member) sees a shadow ledger where customer 7 drifts and the real
    drift of customer 3 does not: the run finds exactly customer 7 there, re-verifies on the primary (clean: the
    task is dismissed, nothing corrected), checks quality and builds the report as the reader; the alert goes
    out; and no password of the three connections appears anywhere the run left a trace."""
    caplog.set_level(logging.INFO)
    for customer in range(1, CUSTOMERS + 1):
        make_customer(engine, customer)
        post_entry(engine, customer, Decimal("40.00"), balance_after="40.00")
        set_cached_balance(engine, customer, "40.00")
    set_cached_balance(engine, 3, "45.00")  # real drift the replica login cannot see
    apply_roles(engine)
    reader = make_login(READER, password=READ_PASSWORD)
    with engine.begin() as conn:  # what the replica login reads as "customers": a ledger a little behind
        conn.execute(text("create schema shadow"))
        conn.execute(text("create table shadow.customers as select * from customers"))
        conn.execute(text("update shadow.customers set balance = case id when 7 then 47.00 else 40.00 end"))
        conn.execute(text("grant usage on schema shadow to reconciler_reader"))
        conn.execute(text("grant select on shadow.customers to reconciler_reader"))
        conn.execute(text(f'alter role "{reader.username}" set search_path = shadow, public'))
    operator = make_login(OPERATOR, password=WRITE_PASSWORD)
    home = tmp_path / "home"
    monkeypatch.setenv("RECONCILER_HOME", str(home))
    monkeypatch.setenv("AIRFLOW_CONN_LEDGER_DB", _airflow_uri(operator))
    monkeypatch.setenv("AIRFLOW_CONN_LEDGER_DB_REPLICA", _airflow_uri(reader))
    monkeypatch.setenv("AIRFLOW_CONN_RECONCILER_ALERTS", json.dumps(
        {"conn_type": "http", "host": webhook.url, "login": "finance", "password": HOOK_PASSWORD}))

    conf = {"chunk_size": 5, "alert_drift_above": "1.00", "max_drift_ratio": "1"}
    dag_run = dagbag.dags["ledger_reconciliation"].test(run_conf=conf)
    states = {(ti.task_id, ti.map_index): str(ti.state) for ti in dag_run.get_task_instances()}
    assert dag_run.state == "success", states

    with engine.connect() as conn:
        (run,) = conn.execute(select(runs)).mappings().all()
        task_rows = conn.execute(select(tasks.c.customer_id, tasks.c.status)).all()
        stored = [json.dumps(row, default=str) for row in conn.execute(text(
            "select params, outcome, error from reconciler.runs union all "
            "select to_jsonb(body), null, null from reconciler.audit_log")).all()]
    assert (run["status"], run["drift_count"]) == ("succeeded", 1)
    assert [(r.customer_id, r.status) for r in task_rows] == [(7, "dismissed")]
    assert run["outcome"]["quality"]["evaluated"] > 0
    assert cached_balance(engine, 3) == ledger_sum(engine, 3) + Decimal("5.00")  # not seen, not touched
    assert [a["json"]["kind"] for a in webhook.received] == ["drift"]

    xcoms = [json.dumps(ti.xcom_pull(task_ids=ti.task_id, map_indexes=ti.map_index), default=str)
             for ti in dag_run.get_task_instances()]
    captured = capfd.readouterr()
    from airflow.configuration import conf as airflow_conf

    log_folder = Path(airflow_conf.get("logging", "base_log_folder"))
    airflow_logs = [p.read_text(errors="replace") for p in log_folder.rglob("*") if p.is_file()]
    report_files = [p.read_text(errors="replace") for p in home.rglob("*") if p.is_file()]
    assert report_files
    texts = [captured.out, captured.err, caplog.text, *xcoms, *stored, *airflow_logs, *report_files,
             json.dumps(webhook.received)]
    assert leaks(texts) == []
