"""
# Ledger reconciliation watchdog

Every hour, checks when a reconciliation run last **succeeded** (`reconciler.runs`). When that is longer
ago than `max_age_hours` (default 26, `RECONCILER_WATCHDOG_MAX_AGE_HOURS`), or no run ever succeeded, it
alerts (task log, mail through `reconciler_smtp` and the chat webhook `reconciler_alerts` when they exist)
and turns red: a skipped night, a paused DAG or runs that keep failing cannot pass as green.
"""

from __future__ import annotations

import datetime as dt
import logging

import pendulum
from airflow.sdk import Param, dag, get_current_context, task
from reconciler_airflow import RunNotClean, env_int, ledger_engine, schedule_from_env
from reconciler_alerts import ReconcilerNotifier, deliver_alert, links_for

log = logging.getLogger(__name__)
DEFAULT_SCHEDULE = "17 * * * *"
MAX_AGE_HOURS = env_int("RECONCILER_WATCHDOG_MAX_AGE_HOURS", 26, minimum=1)


@dag(
    schedule=schedule_from_env("RECONCILER_WATCHDOG_SCHEDULE", DEFAULT_SCHEDULE),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["reconciler", "finance", "watchdog"],
    params={
        "max_age_hours": Param(
            MAX_AGE_HOURS, type="integer", minimum=1, maximum=24 * 31, title="Maximum age (hours)",
            description="Alert when no reconciliation run has succeeded for longer than this many hours."),
    },
    default_args={
        "owner": "finance-engineering",
        "retries": 1,
        "retry_delay": dt.timedelta(minutes=2),
        "on_failure_callback": [ReconcilerNotifier()],
    },
)
def ledger_reconciliation_watchdog() -> None:
    @task
    def check_last_success() -> str | None:
        """Alert (and fail) when the last successful run is older than the maximum age."""
        from reconciler import alerts

        context = get_current_context()
        max_age = dt.timedelta(hours=int(context["params"]["max_age_hours"]))
        with ledger_engine() as engine:
            last = alerts.last_success_at(engine)
            latest = alerts.latest_run(engine)
        alert = alerts.alert_for_staleness(last, dt.datetime.now(dt.UTC), max_age, latest=latest)
        if alert is None:
            return last.isoformat() if last else None
        deliver_alert(alert.with_links(**links_for(context)), context, log)
        raise RunNotClean(f"{alert.subject}: {alert.text}")

    check_last_success()


ledger_reconciliation_watchdog()
