"""What a run did, as the CLI and orchestrators report it: :class:`RunSummary`, read from the run's row."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine

from reconciler import runs, tasks


@dataclass(frozen=True)
class RunSummary:
    """What a run did, as the CLI and orchestrators report it."""

    run_id: int
    status: str
    customers_checked: int
    drift_count: int
    corrected: int
    needs_review: int
    open: int
    total_abs_drift: Decimal
    halted_reason: str | None
    report_path: str | None
    error: str | None = None
    dry_run: bool = False
    details: Mapping[str, Any] = field(default_factory=dict)
    mode: str | None = None
    mode_reason: str | None = None
    verified_from: str | None = None
    verified_to: str | None = None

    def to_json(self) -> dict[str, object]:
        """JSON-able, decimals as strings."""
        return {
            "mode": self.mode, "mode_reason": self.mode_reason, "verified_from": self.verified_from,
            "verified_to": self.verified_to, "scope": self.scope,
            "run_id": self.run_id, "status": self.status, "customers_checked": self.customers_checked,
            "drift_count": self.drift_count, "corrected": self.corrected, "needs_review": self.needs_review,
            "open": self.open, "total_abs_drift": str(self.total_abs_drift), "halted_reason": self.halted_reason,
            "report_path": self.report_path, "error": self.error, "dry_run": self.dry_run, "busy": self.busy,
        }

    @property
    def scope(self) -> dict[str, Any]:
        """What the run compared: for an incremental run, touched customers and those with unresolved tasks."""
        feed = self.details.get("feed")
        scope: dict[str, Any] = {"customers_checked": self.customers_checked}
        if isinstance(feed, Mapping):
            scope.update({key: feed[key] for key in ("touched", "with_unresolved_tasks") if key in feed})
        return scope

    @property
    def busy(self) -> list[dict[str, Any]]:
        """Customers whose correction was skipped because another session held their row lock (retried by the
        next run): ``customer_id``, ``task_id``, ``lockers`` (pid, application_name, state), ``runs_in_a_row``."""
        listed = self.details.get("busy")
        return [dict(item) for item in listed] if isinstance(listed, list) else []

    @property
    def exit_code(self) -> int:
        """0 clean, 1 unresolved drift remains or a critical expectation failed, 3 failed or halted."""
        if self.status in ("failed", "halted"):
            return 3
        if self.open + self.needs_review > 0:
            return 1
        quality = self.details.get("quality")
        if isinstance(quality, Mapping) and quality.get("success") is False:
            return 1
        return 0


def load_summary(engine: Engine, run_id: int) -> RunSummary:
    """The summary of a run (final figures once finished; live figures while running)."""
    with engine.connect() as conn:
        return _summary(conn, run_id)


def _summary(conn: Connection, run_id: int) -> RunSummary:
    row = runs.get_run(conn, run_id)
    outcome: Mapping[str, Any] = row["outcome"] or {}
    params: Mapping[str, Any] = row["params"] or {}
    if "task_counts" in outcome:
        counts: Mapping[str, int] = outcome["task_counts"]
        totals = runs.Totals(int(row["chunk_count"] or 0), int(row["chunk_count"] or 0),
                             int(row["customers_checked"]), int(row["drift_count"]), Decimal(row["total_abs_drift"]))
    else:
        counts = tasks.status_counts(conn, run_id)
        totals = runs.tally(conn, run_id)
    corrections: Mapping[str, int] = outcome.get("corrections", {})
    return RunSummary(
        run_id=run_id, status=row["status"], customers_checked=totals.customers_checked,
        drift_count=totals.drift_count, corrected=int(corrections.get("corrected", 0)),
        needs_review=int(counts.get("needs_review", 0)), open=int(counts.get("open", 0)),
        total_abs_drift=totals.total_abs_drift, halted_reason=outcome.get("halted_reason"),
        report_path=outcome.get("report_path"), error=row["error"], dry_run=bool(params.get("dry_run", False)),
        details=dict(outcome), mode=row["mode"], mode_reason=row["mode_reason"],
        verified_from=row["verified_from"], verified_to=row["verified_to"],
    )

