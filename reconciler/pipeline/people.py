"""Reading a run for people: its largest drifts, one line per summary, one line per error."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from reconciler import findings as finding_store
from reconciler.money import format_money
from reconciler.report_model import DriftLine
from reconciler.row_locks import format_lockers

from .summary import RunSummary


def describe_error(exc: BaseException) -> str:
    """One line naming an error: the database's own message for database errors (no SQL text)."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0]}" if lines else type(cause).__name__



def top_drifts(engine: Engine, run_id: int, limit: int = 10) -> list[DriftLine]:
    """The run's largest drifts (by absolute value) with their explanations and task status."""
    with engine.connect() as conn:
        return finding_store.top_drifts(conn, run_id, limit)


def describe_busy(item: Mapping[str, Any]) -> str:
    """One line for a busy customer: who holds its lock and for how many runs in a row."""
    streak = int(item.get("runs_in_a_row") or 1)
    return (f"customer {item.get('customer_id')} (task {item.get('task_id')}) was locked by "
            f"{format_lockers(item.get('lockers') or [])}; correction skipped, retried next run"
            + (f" (busy {streak} runs in a row)" if streak > 1 else ""))


def describe_summary(summary: RunSummary) -> str:
    """One line for logs."""
    return (f"run {summary.run_id} {summary.status}: {summary.customers_checked} customers checked, "
            f"{summary.drift_count} drifting (total {format_money(summary.total_abs_drift)}), {summary.corrected} "
            f"corrected, {summary.needs_review} need review, {summary.open} open")

