"""Airflow wiring shared by the reconciler DAGs: which ledger database a task uses, how a DAG run's type
becomes a run trigger, and the failure callback. No SQL and no business rules: those live in ``reconciler``.

Nothing here touches a database or looks up a connection at import time (the DAG processor imports this
module on every parse); lookups happen inside the functions, which only tasks and callbacks call.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset
from airflow.sdk.exceptions import AirflowFailException

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.engine import URL

#: The Airflow connection for the ledger database (``AIRFLOW_CONN_LEDGER_DB`` or the metadata database).
LEDGER_CONN_ID = "ledger_db"
#: Optional read side of the ledger (a replica, or a login that may only SELECT): when this connection exists,
#: every read-only step reads from it (``RECONCILER_READ_DATABASE_URL`` outside Airflow).
REPLICA_CONN_ID = "ledger_db_replica"
#: The Airflow pool that caps concurrent load on the ledger database (created by scripts/airflow-env.sh
#: and by the compose init service with ``RECONCILER_POOL_SLOTS`` slots).
LEDGER_POOL = "ledger_db"
DEFAULT_POOL_SLOTS = 4
#: A task's own connection pool: a task is one process doing one step, it needs few connections.
TASK_POOL_SIZE = 2

#: "Balances reconciled": one event per finished run (succeeded or halted; failed runs emit none), with the
#: run's figures as metadata. Downstream DAGs (a finance export) schedule on it: ``schedule=[BALANCES]``.
BALANCES = Asset("reconciler://ledger/balances", group="reconciler")
#: What the comparisons read (inlets: the OpenLineage provider turns inlets and outlets into its datasets).
LEDGER_INPUTS = [Asset("reconciler://ledger/customers", group="reconciler"),
                 Asset("reconciler://ledger/customer_ledger_entries", group="reconciler")]
#: Metric names (Airflow's Stats: StatsD or OpenTelemetry, as [metrics] configures).
METRIC_PREFIX = "reconciler.run"


class RunNotClean(AirflowFailException):
    """Raised by a task after it has already alerted (halted or failed run, stale ledger): the DAG run turns
    red, and the failure callbacks neither alert twice nor overwrite the run's own status."""


def schedule_from_env(name: str, default: str) -> Any:
    """A DAG's schedule from the environment variable ``name`` (read at parse time: environment only): a cron
    expression in UTC, ``default`` when unset, and no schedule (manual runs only) for "none" or "manual"."""
    from airflow.sdk import CronTriggerTimetable

    cron = os.environ.get(name, "").strip() or default
    return None if cron.lower() in ("none", "manual") else CronTriggerTimetable(cron, timezone="UTC")


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    """An integer setting from the environment (read at parse time: environment only, never a database)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer; unset it to use {default}") from None
    if value < minimum:
        raise ValueError(f"{name}={value} is below {minimum}; unset it to use {default}")
    return value


def connection_url(conn_id: str) -> URL | None:
    """The database URL of the Airflow connection ``conn_id``, or None when it does not exist."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    from reconciler.connections import database_url_from_uri

    try:
        connection = Connection.get(conn_id)
    except AirflowNotFoundException:
        return None
    return database_url_from_uri(connection.get_uri())


def ledger_url() -> URL | None:
    """The ledger URL from the Airflow connection ``ledger_db``, or None when it does not exist (then
    :func:`reconciler.db.make_engine` uses ``RECONCILER_DATABASE_URL``, else the embedded database)."""
    return connection_url(LEDGER_CONN_ID)


@contextmanager
def replica_engine() -> Iterator[Engine | None]:
    """An engine for the read-only steps (comparison, explanation, quality checks, report reads): the connection
    ``ledger_db_replica``, else ``RECONCILER_READ_DATABASE_URL``, else None to read the primary. Every
    transaction on it is READ ONLY. Lag only delays findings: corrections re-verify on the primary under the
    row lock."""
    from reconciler.config import configured_read_database_url

    url: URL | str | None = connection_url(REPLICA_CONN_ID) or configured_read_database_url()
    if url is None:
        yield None
        return
    from reconciler.db import make_read_engine

    engine = make_read_engine(url, pool_size=TASK_POOL_SIZE, max_overflow=TASK_POOL_SIZE)
    try:
        yield engine
    finally:
        engine.dispose()


@contextmanager
def ledger_engine() -> Iterator[Engine]:
    """An engine on the ledger database for one task, disposed when the task is done."""
    from reconciler.db import make_engine

    engine = make_engine(ledger_url(), pool_size=TASK_POOL_SIZE, max_overflow=TASK_POOL_SIZE)
    try:
        yield engine
    finally:
        engine.dispose()


@contextmanager
def ledger_step() -> Iterator[Engine]:
    """The ledger engine for one pipeline step. A broken contract (a :class:`ReconcilerError` such as a run that
    is no longer running or an unknown customer) fails the task at once, since retrying cannot help; an
    unreachable database or a persisting deadlock is retried with backoff; a database lost mid-step is one line
    (:class:`~reconciler.errors.DatabaseLostError`) and is retried too."""
    from reconciler.db import database_lost
    from reconciler.errors import DatabaseUnavailableError, ReconcilerError, TransientDatabaseError

    with ledger_engine() as engine:
        try:
            yield engine
        except Exception as exc:
            # A database that went away: ONE line (what was lost, which database without password, that a
            # retry is safe) and its cause, never SQLAlchemy's chained traceback and background link.
            lost = database_lost(exc, engine.url, doing="running this step",
                                 rerun="retrying this task (or rerunning the DAG) is safe")
            if lost is not None:
                raise lost from None
            if isinstance(exc, DatabaseUnavailableError | TransientDatabaseError):
                raise
            if isinstance(exc, ReconcilerError):
                raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
            raise


def trigger_of(run_type: object) -> str:
    """The run trigger recorded in ``reconciler.runs`` for an Airflow DAG run type: timetable runs
    (scheduled, backfill) are ``scheduled``; everything a person or another system started is ``manual``."""
    value = str(getattr(run_type, "value", run_type))
    return "scheduled" if value in ("scheduled", "backfill") else "manual"


def jsonable(value: object) -> Any:
    """``value`` as plain JSON types (decimals and paths as strings) so it can travel in XCom."""
    return json.loads(json.dumps(value, default=str))


def run_id_of(context: Mapping[str, Any]) -> int | None:
    """The reconciler run id of this DAG run (the XCom of ``start_run``), or None before it exists."""
    ti = context.get("ti")
    if ti is None:
        return None
    value = ti.xcom_pull(task_ids="start_run")
    return int(value) if value is not None else None


def failure_reason(context: Mapping[str, Any]) -> str:
    """One line saying which task failed and why, for the run's error column and the alert."""
    ti = context.get("ti")
    where = "unknown task"
    if ti is not None:
        map_index = getattr(ti, "map_index", -1)
        where = f"{ti.dag_id}.{ti.task_id}" + (f"[{map_index}]" if map_index is not None and map_index >= 0 else "")
        where += f" (try {getattr(ti, 'try_number', '?')})"
    exception = context.get("exception")
    error = f"{type(exception).__name__}: {exception}" if exception is not None else "no exception recorded"
    return f"{where}: {error}"


def already_alerted(context: Mapping[str, Any]) -> bool:
    return isinstance(context.get("exception"), RunNotClean)


def mark_run_failed(context: Mapping[str, Any]) -> None:
    """Failure callback: mark this DAG run's reconciler run ``failed`` with the reason (a no-op when the run
    already finished, e.g. halted, or when it was never started)."""
    if already_alerted(context):
        return
    run_id = run_id_of(context)
    if run_id is None:
        return
    from reconciler import pipeline

    with ledger_engine() as engine:
        pipeline.mark_run_failed(engine, run_id, failure_reason(context))


def balances_event(summary: Any, report: str | None) -> dict[str, Any]:
    """The metadata of a :data:`BALANCES` event: JSON only, money as strings (exact)."""
    return {"run_id": summary.run_id, "status": summary.status,
            "mode": str(getattr(summary, "mode", None) or "full"), "customers_checked": summary.customers_checked,
            "drift_count": summary.drift_count, "total_abs_drift": str(summary.total_abs_drift),
            "corrected": summary.corrected, "needs_review": summary.needs_review, "open": summary.open,
            "report": report}


def emit_run_metrics(summary: Any, duration_seconds: float | None) -> dict[str, float]:
    """Send the run's figures through Airflow's Stats: gauges (drift count, total absolute drift, corrected,
    needs review), the run duration as a timing, and counters of runs by status and of corrections; return the
    gauges sent. Metrics are floats by nature: the exact amounts stay in the database and the asset event."""
    from airflow.sdk.observability.stats import Stats

    tags = {"status": summary.status}
    gauges = {"drift_count": float(summary.drift_count), "total_abs_drift": float(summary.total_abs_drift),
              "corrected": float(summary.corrected), "needs_review": float(summary.needs_review)}
    for name, value in gauges.items():
        Stats.gauge(f"{METRIC_PREFIX}.{name}", value, tags=tags)
    if duration_seconds is not None:
        import datetime as dt

        Stats.timing(f"{METRIC_PREFIX}.duration", dt.timedelta(seconds=duration_seconds), tags=tags)
    Stats.incr(f"{METRIC_PREFIX}.finished", tags=tags)
    if summary.corrected:
        Stats.incr(f"{METRIC_PREFIX}.corrections", count=int(summary.corrected), tags=tags)
    return gauges
