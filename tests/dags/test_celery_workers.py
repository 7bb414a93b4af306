"""Celery for real: Airflow's api-server, scheduler and DAG processor with ``CeleryExecutor``, and two real
``airflow celery worker`` processes (worker-a, worker-b), each as if on its own machine: its own AIRFLOW_HOME,
HOME, TMPDIR, working folder and RECONCILER_HOME, sharing only the DAG folder, the databases, the broker and the
report store (``RECONCILER_REPORTS_URL``, a file:// folder outside both). The broker is Redis at 127.0.0.1:6379
when it answers PING, else kombu's SQLAlchemy transport on the test PostgreSQL; the result backend is
``db+postgresql://`` on Airflow's metadata database; workers run their tasks through the api-server's execution
API with the same JWT secret. This is the compose file's Celery profile on one machine.

Why the two workers surely share the chunks (no sleeps, no luck): each worker runs ONE task at a time
(``--concurrency 1``; Airflow's Celery defaults prefetch one message per process and ack late), and before the
run is triggered the test holds an ACCESS EXCLUSIVE lock on ``customer_ledger_entries``, which only the
comparisons read. So the first ``compare_chunk`` blocks inside its SQL statement on one worker, and the next
queued one can only be taken by the other worker. The test waits (REST API polling, with a deadline) until two
``compare_chunk`` instances are running at the same time, which with one slot per worker means on both workers,
then releases the lock. The compare's own ``lock_timeout`` (30 s) bounds the wait; should it ever expire, the
chunk is retried (retries >= 3) and the barrier still closes.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import Engine, select
from sqlalchemy.engine import URL

from reconciler.db import make_engine
from reconciler.schema import findings, runs, tasks
from tests.factories import seed_thirty_customers
from tests.fix_airflow_server import Api, Processes, free_port
from tests.fix_celery import (
    CONCURRENCY_FLAG,
    HOSTNAME_CALLABLE,
    REDIS_PORT,
    WORKER_COMMAND,
    WORKER_ENV,
    celery_environment,
    redis_broker,
    sqla_broker,
)
from tests.fix_db import _admin, _libpq, create_database, drop_database
from tests.fix_http import Webhook, http_connection

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DAG_ID = "ledger_reconciliation"
PASSWORD = "test-admin-password"
WORKERS = ("worker-a", "worker-b")
#: 30 customers in chunks of 8: four mapped compare_chunk tasks for two workers of one slot each.
CHUNK_SIZE = 8
#: The same drifts as tests/dags/test_dag_runs.py; 250.00 is above the auto-correct limit (needs review).
PLANTED = {5: Decimal("12.34"), 17: Decimal("-5.00"), 29: Decimal("250.00")}
CONF: dict[str, object] = {"chunk_size": CHUNK_SIZE, "max_drift_ratio": "1", "alert_drift_above": "1.00"}
REDIS = ("127.0.0.1", REDIS_PORT)
#: Set to "sqla" to use kombu's SQLAlchemy transport even where Redis answers.
BROKER_ENV = "RECONCILER_TEST_CELERY_BROKER"


def redis_answers() -> bool:
    """Whether a Redis server answers PING at 127.0.0.1:6379."""
    try:
        with socket.create_connection(REDIS, timeout=1) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _forget_redis_keys(prefix: str) -> None:
    """Delete the keys Celery left under this test's prefix (bindings, pidbox) from the shared Redis."""
    import redis

    client = redis.Redis(*REDIS)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def _sqlalchemy_url(url: URL, drivername: str = "postgresql") -> str:
    return url.set(drivername=drivername).render_as_string(hide_password=False)


@dataclass
class Cluster:
    api: Api
    processes: Processes
    broker: str
    reports: Path
    homes: dict[str, Path]


@pytest.fixture
def cluster(server_url: URL, db_url: URL, tmp_path: Path, webhook: Webhook) -> Iterator[Cluster]:
    """Airflow with the CeleryExecutor and two Celery workers on this test's ledger, starting in the background
    (the test waits with :func:`wait_until_ready`); every process group is stopped afterwards, pass or fail."""
    tag = f"{os.getpid()}_{time.monotonic_ns()}"
    metadata = server_url.set(database=f"airflow_celery_{tag}")
    if os.environ.get(BROKER_ENV, "").strip().lower() != "sqla" and redis_answers():
        broker, broker_db = redis_broker(REDIS[0]), None
        # Other test sessions may share this Redis: every key and channel of ours carries this prefix.
        broker_options = {"AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX": f"reconciler-test-{tag}:"}
    else:
        broker_db = server_url.set(database=f"celery_broker_{tag}")
        broker, broker_options = sqla_broker(broker_db), {}
    databases = [metadata] + ([broker_db] if broker_db is not None else [])

    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    home = tmp_path / "airflow"
    home.mkdir()
    passwords = home / "simple_auth_manager_passwords.json.generated"
    passwords.write_text(json.dumps({"admin": PASSWORD}))
    reports = tmp_path / "shared" / "reports"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYTEST"))},
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        **celery_environment(broker=broker, sql_alchemy_conn=_sqlalchemy_url(metadata, "postgresql+psycopg"),
                             api_server=base_url),
        **broker_options,
        # Our own queue as well: a worker of another session on the same broker never takes our tasks.
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE": f"reconciler-test-{tag}",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
        "AIRFLOW__API__BASE_URL": base_url,
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "4",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "AIRFLOW_CONN_LEDGER_DB": _sqlalchemy_url(db_url),
        "AIRFLOW_CONN_RECONCILER_ALERTS": http_connection(webhook.url),
        "RECONCILER_REPORTS_URL": reports.as_uri(),
        "RECONCILER_POOL_SLOTS": "4",
        "RECONCILER_RETRY_DELAY_SECONDS": "0",
        # Only the manual run under test, and no one at the approval step (the needs_review task stays there).
        "RECONCILER_SCHEDULE": "none",
        "RECONCILER_WATCHDOG_SCHEDULE": "none",
        "RECONCILER_REVIEW": "off",
    }
    processes = Processes()
    homes: dict[str, Path] = {}
    try:
        for database in databases:
            _admin(server_url, sql.SQL("create database {}").format(sql.Identifier(database.database or "")))
        # Airflow's metadata database and the pool ledger_db, as scripts/airflow-env.sh prepares them.
        setup = subprocess.run([sys.executable, str(REPO / "scripts" / "airflow_setup.py")], capture_output=True,
                               text=True, env={**env, "RECONCILER_HOME": str(tmp_path / "home")}, timeout=180,
                               check=False)
        assert setup.returncode == 0, setup.stderr[-4000:]
        airflow = str(Path(sys.executable).parent / "airflow")
        for name, command in (("api-server", ["api-server", "--host", "127.0.0.1", "--port", str(port)]),
                              ("scheduler", ["scheduler"]), ("dag-processor", ["dag-processor"])):
            processes.start(name, [airflow, *command], {**env, "RECONCILER_HOME": str(tmp_path / "home")},
                            tmp_path / f"{name}.log")
        for worker in WORKERS:
            local = tmp_path / worker  # this worker's "machine": nothing here is shared
            homes[worker] = local
            for folder in ("airflow", "home", "tmp", "cwd", "reconciler"):
                (local / folder).mkdir(parents=True)
            worker_env = {**env, "AIRFLOW_HOME": str(local / "airflow"), "HOME": str(local / "home"),
                          "TMPDIR": str(local / "tmp"), "RECONCILER_HOME": str(local / "reconciler"),
                          WORKER_ENV: worker, "PYTHONPATH": str(REPO),
                          "AIRFLOW__CORE__HOSTNAME_CALLABLE": HOSTNAME_CALLABLE,
                          "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port())}
            # One task at a time per worker (see the module docstring); the name tells the two apart on one host.
            processes.start(worker, [airflow, *WORKER_COMMAND, CONCURRENCY_FLAG, "1", "--celery-hostname", worker,
                                     "--queues", env["AIRFLOW__OPERATORS__DEFAULT_QUEUE"]],
                            worker_env, tmp_path / f"{worker}.log", cwd=local / "cwd")
        yield Cluster(Api(base_url), processes, broker, reports, homes)
    finally:
        processes.stop()
        for database in databases:
            drop_database(database)
        if broker.startswith("redis://"):
            _forget_redis_keys(broker_options["AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX"])


def wait_until_ready(cluster: Cluster) -> None:
    """A JWT from the api-server, the DAG parsed, and both workers consuming."""
    processes, api = cluster.processes, cluster.api
    api.token = processes.wait_for("token from /auth/token", lambda: api.login("admin", PASSWORD), 240)
    processes.wait_for(f"DAG {DAG_ID} parsed", lambda: api.get(f"/api/v2/dags/{DAG_ID}"), 240)
    for worker in WORKERS:
        processes.wait_for(f"Celery worker {worker} ready", lambda w=worker: True if f"celery@{w} ready." in (
            processes.logs[w].read_text(errors="replace")) else None, 240)


def instances(api: Api, run_path: str) -> list[dict[str, Any]] | None:
    body = api.get(f"{run_path}/taskInstances")
    return None if body is None else list(body["task_instances"])


def _fresh_dag(dagbag: Any) -> Any:
    """The DAG parsed anew (a real trigger's conf stays out of the session dagbag's DAG: dag.test() leaves it in
    the DAG's params)."""
    from airflow.dag_processing.dagbag import BundleDagBag

    folder = REPO / "dags"
    parsed = BundleDagBag(dag_folder=folder, bundle_path=folder, bundle_name="dags-folder",
                          known_pools={"ledger_db", "default_pool"})
    assert not parsed.import_errors, parsed.import_errors
    return parsed.dags[DAG_ID]


def _findings(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            select(findings.c.customer_id, findings.c.chunk_index, findings.c.stored_balance, findings.c.ledger_sum,
                   findings.c.drift, findings.c.cause, findings.c.evidence).order_by(findings.c.customer_id))]


def _tasks(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            select(tasks.c.customer_id, tasks.c.status, tasks.c.stored_balance, tasks.c.ledger_sum, tasks.c.drift,
                   tasks.c.cause, tasks.c.correction_entry_id.is_not(None)).order_by(tasks.c.customer_id))]


def _run_summary(engine: Engine) -> tuple[Any, ...]:
    with engine.connect() as conn:
        [row] = conn.execute(select(runs.c.status, runs.c.trigger, runs.c.mode, runs.c.customers_checked,
                                    runs.c.drift_count, runs.c.total_abs_drift, runs.c.chunk_count)).all()
    return tuple(row)


def _outcome(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        return dict(conn.execute(select(runs.c.outcome)).scalar_one())


def test_mapped_chunks_run_on_two_celery_workers_and_match_an_in_process_run(
        cluster: Cluster, engine: Engine, db_url: URL, server_url: URL, template_url: URL, dagbag: Any,
        webhook: Webhook, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run triggered through the REST API on the CeleryExecutor maps four compare_chunk tasks that run on
    BOTH workers (task instance hostnames), succeeds, and stages the same findings, tasks and run summary as an
    in-process dag.test() run of the same DAG with the same Params on an identical ledger; its report and Data
    Docs are all under the one shared RECONCILER_REPORTS_URL (nothing in either worker's local folders), and the
    run summary and the alert link there."""
    started = time.monotonic()
    seed_thirty_customers(engine, PLANTED)
    twin_url = create_database(server_url, template_url)
    twin = make_engine(twin_url)
    try:
        seed_thirty_customers(twin, PLANTED)
        # The in-process run, while the cluster starts.
        monkeypatch.setenv("AIRFLOW_CONN_LEDGER_DB", _sqlalchemy_url(twin_url))
        monkeypatch.setenv("RECONCILER_REVIEW", "off")
        local = _fresh_dag(dagbag).test(run_conf=CONF)
        assert local.state == "success", {(ti.task_id, ti.map_index): ti.state for ti in local.get_task_instances()}

        wait_until_ready(cluster)
        api = cluster.api
        # The barrier: only the comparisons read the ledger entries (see the module docstring).
        with psycopg.connect(_libpq(db_url)) as barrier:
            barrier.execute("lock table customer_ledger_entries in access exclusive mode")
            status, created = api.call("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": CONF})
            assert status == 200, created
            run_path = f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(created['dag_run_id'], safe='')}"

            def two_comparing() -> list[dict[str, Any]] | None:
                running = [ti for ti in instances(api, run_path) or []
                           if ti["task_id"] == "compare_chunk" and ti["state"] == "running"]
                return running if len(running) >= 2 else None

            together = cluster.processes.wait_for("two compare_chunk tasks running at once", two_comparing, 180)
            barrier.rollback()

        def finished() -> str | None:
            state = (api.get(run_path) or {}).get("state")
            return str(state) if state in ("success", "failed") else None

        state = cluster.processes.wait_for("the DAG run to finish", finished, 240)
        tis = instances(api, run_path) or []
        states = {(ti["task_id"], ti["map_index"]): (ti["state"], ti["hostname"]) for ti in tis}
        assert state == "success", states
        elapsed = time.monotonic() - started
        print(f"\nCelery run on {cluster.broker.split(':')[0]}: {elapsed:.0f} s from seeding to the finished run; "
              f"tasks by worker: {sorted((t, i, h) for (t, i), (_, h) in states.items())}")

        # Both workers compared chunks: the two running at once were on different workers.
        assert sorted({ti["hostname"] for ti in together}) == sorted(WORKERS), together
        compares = {ti["map_index"]: ti["hostname"] for ti in tis if ti["task_id"] == "compare_chunk"}
        assert sorted(compares) == [0, 1, 2, 3]
        assert set(compares.values()) == set(WORKERS), compares
        assert {h for (_, h) in states.values() if h} <= set(WORKERS), states
        for worker in WORKERS:  # each worker's own log shows it executed workloads
            assert "Executing workload in Celery" in cluster.processes.logs[worker].read_text(errors="replace")

        # The same findings, tasks and run figures as the in-process run on the identical ledger.
        assert _findings(engine) == _findings(twin) and len(_findings(engine)) == len(PLANTED)
        assert _tasks(engine) == _tasks(twin)
        assert [row[:2] for row in _tasks(engine)] == [(5, "corrected"), (17, "corrected"), (29, "needs_review")]
        assert _run_summary(engine) == _run_summary(twin)
        assert _run_summary(engine)[:5] == ("succeeded", "manual", "full", 30, 3)

        # One report store: the report (build_report) and the Data Docs (check_quality), whichever workers ran
        # them, are under the shared base; neither worker kept anything in its own folders.
        outcome = _outcome(engine)
        run_folder = cluster.reports / "run-1"
        assert outcome["report_path"] == str(run_folder)  # a file:// base is recorded as its local path
        assert str(outcome["quality"]["data_docs_path"]).startswith(f"{run_folder}/data_docs"), outcome["quality"]
        files = {p.relative_to(run_folder).as_posix() for p in run_folder.rglob("*") if p.is_file()}
        assert {"report.html", "tasks.csv", "summary.json", "data_docs/index.html"} <= files, files
        for worker, folder in cluster.homes.items():
            assert not (folder / "reconciler" / "reports").exists(), worker
            kept = [p for p in folder.rglob("*") if p.is_file() and (p.suffix in (".html", ".csv")
                                                                     or p.name == "summary.json")]
            assert kept == [], (worker, kept)
        [alert] = [a["json"] for a in webhook.received if a["json"].get("run_id") is not None
                   and a["json"]["links"].get("report") == outcome["report_path"]]
        assert alert["kind"] == "drift"
        print(f"check_quality ran on {states[('check_quality', -1)][1]}, build_report on "
              f"{states[('build_report', -1)][1]}")
    finally:
        twin.dispose()
        drop_database(twin_url)
