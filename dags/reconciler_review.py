"""The four-eyes approval step of the reconciliation DAG, on the standard provider's Human-in-the-loop operator
(Airflow 3.1+; on 3.3 the task waits in ``awaiting_input``, no triggerer needed). No UI of our own: the
approver answers in Airflow's "Required actions" page or through the REST API
(``PATCH /api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/review_corrections/-1/hitlDetails``).

The rules live in :mod:`reconciler.approvals`; this module only asks and hands the answer over. Nothing here
touches a database at import time.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping, Sequence
from typing import Any

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import Param
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from reconciler_airflow import ledger_engine, run_id_of

#: Who may approve (comma-separated Airflow user names); for scheduled runs the only ones who may.
APPROVERS_ENV = "RECONCILER_APPROVERS"
#: "off" skips the approval step (e.g. `make demo`, which has no one to answer): reviews then go through the
#: command line (`reconciler tasks resolve`), under the same four-eyes rule.
REVIEW_ENV = "RECONCILER_REVIEW"
APPROVE_ALL = "Approve all"
APPROVE_SELECTED = "Approve selected"
REJECT = "Reject"
#: Markdown rows shown in the approval form (the rest are in `reconciler tasks list --status needs_review`).
MAX_ROWS = 50


def configured_approvers() -> tuple[str, ...]:
    from reconciler.approvals import parse_approvers

    return parse_approvers(os.environ.get(APPROVERS_ENV, ""))


def trigger_user(context: Mapping[str, Any]) -> str | None:
    """The person who triggered this DAG run (None for scheduled runs)."""
    dag_run = context["dag_run"]
    run_type = str(getattr(dag_run.run_type, "value", dag_run.run_type))
    if run_type in ("scheduled", "backfill"):
        return None
    return getattr(dag_run, "triggering_user_name", None) or None


def review_body(run_id: int, candidates: Sequence[Any]) -> str:
    """The approval form's text (Markdown): one row per task with customer, drift, cause and evidence."""
    from reconciler.money import format_money

    def cell(value: object) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    rows = [f"| {t.id} | {t.customer_id} | {format_money(t.drift)} | {format_money(t.stored_balance)} | "
            f"{format_money(t.ledger_sum)} | {cell(t.cause or 'unknown')} | "
            f"{cell(', '.join(f'{k}: {v}' for k, v in sorted(dict(t.evidence or {}).items()))[:300] or '-')} |"
            for t in candidates[:MAX_ROWS]]
    more = (f"\n\n… and {len(candidates) - MAX_ROWS} more: `reconciler tasks list --status needs_review --run "
            f"{run_id}`") if len(candidates) > MAX_ROWS else ""
    return (f"Run {run_id} sent these drifts to review: each is above the auto-correct limit. **{APPROVE_ALL}** "
            f"corrects them all through the balance core, **{APPROVE_SELECTED}** only the task ids you list, "
            f"**{REJECT}** none (they stay in review with your note). You cannot approve a run you triggered.\n\n"
            "| task | customer | drift | balance | ledger sum | probable cause | evidence |\n"
            "|---:|---:|---:|---:|---:|---|---|\n" + "\n".join(rows) + more)


class FourEyesReview(HITLOperator):
    """Ask a second person to approve the run's ``needs_review`` corrections (skipped when there are none).

    Options: approve all, approve selected (the ``task_ids`` field), reject (with the ``note`` field). With no
    answer within ``response_timeout`` the default, Reject, is taken with no respondent: ``apply_review``
    treats that as a timeout and corrects nothing. ``assigned_users`` is the configured approver list
    (``RECONCILER_APPROVERS``) minus the person who triggered the run."""

    def __init__(self, *, response_timeout: dt.timedelta, **kwargs: Any) -> None:
        kwargs.pop("params", None)  # the DAG's own Params: the form shows only the two fields below
        super().__init__(
            subject="Approve corrections above the auto-correct limit",
            options=[APPROVE_ALL, APPROVE_SELECTED, REJECT], defaults=[REJECT], multiple=False,
            params={
                "task_ids": Param([], type="array", items={"type": "integer", "minimum": 1}, uniqueItems=True,
                                  title="Tasks to approve", description=f"For '{APPROVE_SELECTED}': the task ids "
                                                                        "to correct, one per line."),
                "note": Param("", type="string", maxLength=2000, title="Note",
                              description="Why (recorded in each task's audit trail)."),
            },
            response_timeout=response_timeout, **kwargs)

    def execute(self, context: Any) -> Any:
        from reconciler import approvals, pipeline

        if os.environ.get(REVIEW_ENV, "on").strip().lower() in ("off", "0", "false", "no"):
            raise AirflowSkipException(f"{REVIEW_ENV}=off: review the corrections with `reconciler tasks resolve`")
        run = run_id_of(context)
        if run is None:
            raise AirflowFailException("no reconciler run recorded for this DAG run")
        with ledger_engine() as engine:
            summary = pipeline.load_summary(engine, run)
            candidates = approvals.review_candidates(engine, run)
        if summary.dry_run or summary.halted_reason or not candidates:
            raise AirflowSkipException(f"run {run}: no correction awaits review")
        self.subject = (f"Reconciliation run {run}: approve {len(candidates)} correction"
                        f"{'s' if len(candidates) != 1 else ''} above the auto-correct limit")
        self.body = review_body(run, candidates)
        approvers = configured_approvers()
        if approvers:
            eligible = approvals.eligible_approvers(approvers, [trigger_user(context)])
            if not eligible:
                raise AirflowFailException(f"{APPROVERS_ENV} names no one but the person who triggered the run; "
                                           "add a second approver")
            self.assigned_users = [{"id": name, "name": name} for name in eligible]
        return super().execute(context)


def decision_from(response: Mapping[str, Any], pending: Sequence[int]) -> Any:
    """The :class:`reconciler.approvals.ReviewDecision` an HITL response stands for."""
    from reconciler.approvals import ReviewDecision

    user = response.get("responded_by_user") or {}
    approver = str(user.get("name") or user.get("id") or "")
    params = dict(response.get("params_input") or {})
    note = str(params.get("note") or "")
    [chosen] = list(response.get("chosen_options") or [REJECT])
    if chosen == APPROVE_ALL:
        return ReviewDecision(tuple(pending), (), approver, note)
    if chosen == APPROVE_SELECTED:
        selected = tuple(int(i) for i in params.get("task_ids") or [])
        return ReviewDecision(selected, tuple(i for i in pending if i not in selected), approver, note)
    return ReviewDecision((), tuple(pending), approver, note)
