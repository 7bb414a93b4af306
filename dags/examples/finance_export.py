"""
# Finance export (example consumer of "balances reconciled")

Scheduled on the asset `reconciler://ledger/balances`: it runs each time a reconciliation run finished and
its report was filed, and reads the event's metadata (run id, status, mode, drift count, total absolute
drift, report location). This example only exports a succeeded run's figures to its log and XCom; a real
export would copy them (or the report) to the finance system. A halted run is skipped: its corrections
were not made.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import pendulum
from airflow.sdk import dag, get_current_context, task
from reconciler_airflow import BALANCES

log = logging.getLogger(__name__)


def latest_reconciled(events: Sequence[Any]) -> Mapping[str, Any] | None:
    """The metadata of the newest "balances reconciled" event whose run succeeded, or None."""
    for event in reversed(list(events)):
        extra = dict(getattr(event, "extra", None) or {})
        if extra.get("status") == "succeeded":
            return extra
    return None


@dag(
    schedule=[BALANCES],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    doc_md=__doc__,
    tags=["reconciler", "finance", "example"],
)
def finance_export() -> None:
    @task
    def export_reconciled_balances() -> dict[str, Any] | None:
        """Export the figures of the run that triggered this DAG run (nothing for a halted run)."""
        events = get_current_context()["triggering_asset_events"].get(BALANCES, [])
        reconciled = latest_reconciled(events)
        if reconciled is None:
            log.info("no succeeded reconciliation among %d event(s): nothing to export", len(events))
            return None
        log.info("exporting run %s: %s drifting, total %s, report %s", reconciled["run_id"],
                 reconciled["drift_count"], reconciled["total_abs_drift"], reconciled["report"])
        return dict(reconciled)

    export_reconciled_balances()


finance_export()
