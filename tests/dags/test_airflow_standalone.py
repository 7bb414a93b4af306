"""`make airflow` for real: scripts/airflow.sh starts `airflow standalone` (api-server, scheduler, dag-processor,
triggerer) on a test metadata database; a manual run triggered through the REST API v2 with a JWT from
/auth/token reconciles the test ledger; then the whole process group is stopped."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TypeVar

import pytest
from psycopg import sql
from sqlalchemy import Engine, select
from sqlalchemy.engine import URL

from reconciler.schema import runs, tasks
from tests.factories import cached_balance, ledger_sum, make_customer, post_entry, set_cached_balance
from tests.fix_airflow_server import Api, Processes, free_port, group_alive
from tests.fix_db import _admin

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "test-admin-password"
T = TypeVar("T")


@dataclass
class Standalone:
    api: Api
    ledger: Engine
    processes: Processes

    def wait_for(self, what: str, check: Callable[[], T | None], timeout: float) -> T:
        return self.processes.wait_for(what, check, timeout)


@pytest.fixture
def standalone(db_url: URL, engine: Engine, server_url: URL, tmp_path: Path) -> Iterator[Standalone]:
    """`bash scripts/airflow.sh` on its own metadata database, the ledger connection on this test's database."""
    for customer in range(1, 21):
        make_customer(engine, customer)
        post_entry(engine, customer, Decimal("40.00"))
        set_cached_balance(engine, customer, Decimal("40.00"))
    set_cached_balance(engine, 7, Decimal("47.50"))

    metadata = f"airflow_srv_{os.getpid()}"
    _admin(server_url, sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(metadata)))
    _admin(server_url, sql.SQL("create database {}").format(sql.Identifier(metadata)))
    home = tmp_path / "airflow"
    home.mkdir()
    (home / "simple_auth_manager_passwords.json.generated").write_text(json.dumps({"admin": PASSWORD}))
    port = free_port()
    env = {
        **os.environ,
        "RECONCILER_HOME": str(tmp_path / "home"),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW_PORT": str(port),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": server_url.set(database=metadata).render_as_string(
            hide_password=False),
        "AIRFLOW_CONN_LEDGER_DB": db_url.set(drivername="postgresql").render_as_string(hide_password=False),
        # Only the manual run under test: no timetable runs meanwhile.
        "RECONCILER_SCHEDULE": "none",
        "RECONCILER_WATCHDOG_SCHEDULE": "none",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
    }
    processes = Processes()
    processes.start("airflow standalone", ["bash", str(REPO / "scripts" / "airflow.sh")], env,
                    tmp_path / "standalone.log")
    api = Api(f"http://127.0.0.1:{port}")
    try:
        api.token = processes.wait_for("token from /auth/token", lambda: api.login("admin", PASSWORD), 240)
        processes.wait_for("DAG ledger_reconciliation parsed",
                           lambda: True if api.call("GET", "/api/v2/dags/ledger_reconciliation")[0] == 200 else None,
                           240)
        yield Standalone(api, engine, processes)
    finally:
        _stop(processes.running["airflow standalone"], home / "standalone.pid")
        _admin(server_url, sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(metadata)))


def _stop(server: subprocess.Popen[bytes], pid_file: Path) -> None:
    """Stop scripts/airflow.sh as Ctrl-C would (it stops standalone's process group with SIGTERM and waits for
    it); whatever is still alive after that is killed, so no Airflow process outlives the test."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.wait(timeout=60)
    groups = [server.pid] + ([int(pid_file.read_text())] if pid_file.exists() else [])
    deadline = time.monotonic() + 10
    while any(group_alive(g) for g in groups) and time.monotonic() < deadline:
        time.sleep(0.2)
    for group in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
    server.wait(timeout=10)


def test_manual_run_through_the_rest_api_succeeds(standalone: Standalone) -> None:
    """A run triggered by POST /api/v2/dags/ledger_reconciliation/dagRuns (JWT auth) with Params succeeds,
    maps one compare per chunk, and corrects the planted drift; an invalid conf is refused with 400."""
    api, ledger = standalone.api, standalone.ledger
    status, refused = api.call("POST", "/api/v2/dags/ledger_reconciliation/dagRuns",
                               {"logical_date": None, "conf": {"chunk_size": 0}})
    assert status == 400, refused
    status, created = api.call("POST", "/api/v2/dags/ledger_reconciliation/dagRuns",
                               {"logical_date": None, "conf": {"chunk_size": 10, "max_drift_ratio": "1"}})
    assert status == 200, created
    run_path = f"/api/v2/dags/ledger_reconciliation/dagRuns/{created['dag_run_id']}"
    assert created["run_type"] == "manual"

    def finished() -> str | None:
        try:  # a busy 2-core machine may keep the api-server from answering at once: then ask again
            state = str(api.call("GET", run_path)[1]["state"])
        except (urllib.error.URLError, TimeoutError):
            return None
        return state if state in ("success", "failed") else None

    server_state = standalone.wait_for("finished DAG run", finished, 300)
    status, instances = api.call("GET", f"{run_path}/taskInstances")
    assert status == 200
    states = {(ti["task_id"], ti["map_index"]): ti["state"] for ti in instances["task_instances"]}
    assert server_state == "success", states
    assert sorted(i for (task, i) in states if task == "compare_chunk") == [0, 1]
    labels = sorted(ti["rendered_map_index"] for ti in instances["task_instances"] if ti["task_id"] == "compare_chunk")
    assert labels == ["chunk 0: ids 1..10", "chunk 1: ids 11..20"]

    with ledger.connect() as conn:
        [run] = conn.execute(select(runs)).mappings().all()
        statuses = conn.execute(select(tasks.c.customer_id, tasks.c.status)).all()
    assert (run["status"], run["trigger"], run["drift_count"]) == ("succeeded", "manual", 1)
    assert [tuple(row) for row in statuses] == [(7, "corrected")]
    assert cached_balance(ledger, 7) == ledger_sum(ledger, 7) == Decimal("40.00")
