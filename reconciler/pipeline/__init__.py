"""One reconciliation run end to end: plan -> compare chunks -> quality -> tasks -> corrections -> report.

Invariant: every step keeps all its state in the database and can be retried or rerun with the same result
(steps take and return only ids, bounds and counts). The CLI runs the steps in one process
(:func:`run_reconciliation`); an orchestrator may run each step as its own task. Nothing here writes a
balance or an entry: corrections go through :mod:`reconciler.balances`.

A package, each module named for what it owns: :mod:`.options` (run options and their bounds),
:mod:`.summary` (what a run did), :mod:`.steps` (the retryable steps), :mod:`.correct` (the corrections
step), :mod:`.runner` (every step in one process) and :mod:`.people` (formatting for people). Import from
here: ``from reconciler.pipeline import RunOptions, run_reconciliation``.
"""

from __future__ import annotations

from reconciler.money import DEFAULT_TOLERANCE

from .correct import CORRECTION_BATCH, MAX_BUSY_LISTED, apply_run_corrections
from .options import (
    DEFAULT_AUTO_CORRECT_LIMIT,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MAX_DRIFT_RATIO,
    DEFAULT_WORKERS,
    MAX_CHUNK_SIZE,
    MAX_WORKERS,
    Progress,
    RunOptions,
)
from .people import describe_busy, describe_error, describe_summary, top_drifts
from .runner import run_reconciliation
from .steps import (
    DEFAULT_STEP_LOCK_TIMEOUT,
    HEARTBEAT_INTERVAL,
    TASK_SPAN_CUSTOMERS,
    Span,
    build_report,
    check_quality,
    compare_run_chunk,
    finish_run,
    group_spans,
    heartbeat,
    mark_run_failed,
    open_run_tasks,
    plan_run,
    start_run,
)
from .summary import RunSummary, load_summary

__all__ = [
    "CORRECTION_BATCH",
    "DEFAULT_AUTO_CORRECT_LIMIT",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_MAX_DRIFT_RATIO",
    "DEFAULT_STEP_LOCK_TIMEOUT",
    "DEFAULT_TOLERANCE",
    "DEFAULT_WORKERS",
    "HEARTBEAT_INTERVAL",
    "MAX_BUSY_LISTED",
    "MAX_CHUNK_SIZE",
    "MAX_WORKERS",
    "TASK_SPAN_CUSTOMERS",
    "Progress",
    "RunOptions",
    "RunSummary",
    "Span",
    "apply_run_corrections",
    "build_report",
    "check_quality",
    "compare_run_chunk",
    "describe_busy",
    "describe_error",
    "describe_summary",
    "finish_run",
    "group_spans",
    "heartbeat",
    "load_summary",
    "mark_run_failed",
    "open_run_tasks",
    "plan_run",
    "run_reconciliation",
    "start_run",
    "top_drifts",
]
