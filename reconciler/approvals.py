"""Four-eyes approval of corrections above the auto-correct limit.

Invariant: a task whose drift is above its run's auto-correct limit (it went to ``needs_review``) is corrected
only when a person other than the one who proposed it approves; the proposer is whoever triggered a run that
saw the drift (recorded on the run as ``outcome.triggered_by``; a scheduled run has none). Approved tasks
are corrected through :func:`reconciler.correction_executor.resolve_task` (the balance core, re-verified
under the row lock), the approver recorded as ``approved_by`` in the task's events. A rejected task stays
``needs_review`` with a ``reject`` event (approver and note): the drift is real until someone corrects or
dismisses it, so it is never closed silently, and it is offered again at the next run's review. A review
nobody answered in time corrects nothing and appends a ``review_timeout`` event. Deciding is pure; the
writers at the end use the existing task events (no table of their own).
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import Engine, select

from reconciler import correction_executor, runs, tasks
from reconciler.alerts import ReviewOutcome
from reconciler.correction_executor import Resolved
from reconciler.errors import FourEyesError, InvalidOperationError
from reconciler.money import format_money, to_money
from reconciler.schema import runs as runs_table
from reconciler.vocabulary import DEFAULT_POLICY

DEFAULT_AUTO_CORRECT_LIMIT = Decimal("100.00")
#: Where a run records the person who triggered it (``reconciler.runs.outcome``).
TRIGGERED_BY = "triggered_by"
#: Who runs the command line (default: the login name).
USER_ENV = "RECONCILER_USER"


def current_user() -> str:
    """The person at the command line: ``RECONCILER_USER``, else the login name."""
    return os.environ.get(USER_ENV, "").strip() or getpass.getuser()


def normalise_user(name: str | None) -> str | None:
    cleaned = (name or "").strip()
    return cleaned.casefold() or None


def parse_approvers(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """Approver names from a comma-separated text (e.g. ``RECONCILER_APPROVERS``) or a list, in order, unique."""
    items = value.split(",") if isinstance(value, str) else list(value or ())
    seen: dict[str, str] = {}
    for item in items:
        name = item.strip()
        if name and name.casefold() not in seen:
            seen[name.casefold()] = name
    return tuple(seen.values())


def eligible_approvers(approvers: Sequence[str], proposers: Iterable[str | None]) -> tuple[str, ...]:
    """The configured approvers who may approve: everyone in the list but the proposers."""
    blocked = {normalise_user(p) for p in proposers} - {None}
    return tuple(a for a in approvers if normalise_user(a) not in blocked)


def check_four_eyes(approver: str, proposers: Iterable[str | None], *, approvers: Sequence[str] = (),
                    what: str = "this correction") -> None:
    """Raise :class:`FourEyesError` when ``approver`` proposed ``what`` or is not among ``approvers`` (when a
    list is configured)."""
    who = normalise_user(approver)
    if who is None:
        raise InvalidOperationError(f"an approver must be named to approve {what}")
    named = sorted({str(p) for p in proposers if normalise_user(p)})
    if who in {normalise_user(p) for p in named}:
        raise FourEyesError(
            f"{approver!r} proposed {what} (triggered the run that found it) and cannot also approve it: four "
            f"eyes are required; ask another person to approve (--by NAME)")
    if approvers and who not in {normalise_user(a) for a in approvers}:
        raise FourEyesError(f"{approver!r} is not among the configured approvers ({', '.join(approvers)}) for {what}")


def needs_four_eyes(drift: Decimal, status: str, limit: Decimal) -> bool:
    """Whether approving a correction needs a second person: the task went to review or is above the limit."""
    return status == "needs_review" or abs(drift) > limit


# ---- the database side ------------------------------------------------------------------------------------

def record_trigger_user(engine: Engine, run_id: int, user: str | None) -> None:
    """Record who triggered ``run_id`` (a no-op for ``None``: scheduled runs have no person behind them)."""
    if not (user or "").strip():
        return
    with engine.begin() as conn:
        runs.merge_outcome(conn, run_id, {TRIGGERED_BY: str(user).strip()})


def _run_facts(engine: Engine, run_ids: Iterable[int | None]) -> tuple[set[str], Decimal]:
    """The trigger users of these runs, and the auto-correct limit of the newest of them."""
    ids = sorted({i for i in run_ids if i is not None})
    users: set[str] = set()
    limit = DEFAULT_AUTO_CORRECT_LIMIT
    if not ids:
        return users, limit
    with engine.connect() as conn:
        rows = conn.execute(select(runs_table.c.id, runs_table.c.params, runs_table.c.outcome)
                            .where(runs_table.c.id.in_(ids)).order_by(runs_table.c.id)).all()
    for row in rows:
        outcome: Mapping[str, object] = row.outcome or {}
        if outcome.get(TRIGGERED_BY):
            users.add(str(outcome[TRIGGERED_BY]))
        params: Mapping[str, object] = row.params or {}
        if params.get("auto_correct_limit") not in (None, ""):
            limit = to_money(params["auto_correct_limit"], name="auto_correct_limit")
    return users, limit


def proposers_of(engine: Engine, task: tasks.TaskView) -> set[str]:
    """Who proposed the task's correction: the people who triggered the runs that opened it or last saw it."""
    return _run_facts(engine, (task.run_id, task.last_seen_run_id))[0]


def resolve_with_four_eyes(engine: Engine, task_id: int, action: str, by: str, note: str,
                           policy: str = DEFAULT_POLICY, *, approvers: Sequence[str] = ()) -> Resolved:
    """:func:`reconciler.correction_executor.resolve_task`, refusing (:class:`FourEyesError`, nothing written)
    to ``correct`` a task above its run's auto-correct limit on the word of the person who proposed it."""
    if action == "correct":
        with engine.connect() as conn:
            task = tasks.get_task(conn, task_id)
        proposers, limit = _run_facts(engine, (task.run_id, task.last_seen_run_id))
        if task.unresolved and needs_four_eyes(task.drift, task.status, limit):
            check_four_eyes(by, proposers, approvers=approvers,
                            what=f"the correction of task {task_id} (drift {format_money(task.drift)} above the "
                                 f"auto-correct limit {format_money(limit)})")
    return correction_executor.resolve_task(engine, task_id, action, by, note, policy)


def review_candidates(engine: Engine, run_id: int) -> list[tasks.TaskView]:
    """The tasks this run sent (or left) in ``needs_review``, oldest first."""
    with engine.connect() as conn:
        found = tasks.list_tasks(conn, status="needs_review", run_id=run_id)
    return sorted(found, key=lambda t: t.id)


@dataclass(frozen=True)
class ReviewDecision:
    """What an approver answered: the task ids approved and rejected, who, and why."""

    approve: tuple[int, ...]
    reject: tuple[int, ...]
    approver: str
    note: str


def apply_review(engine: Engine, run_id: int, decision: ReviewDecision, *, proposers: Iterable[str | None],
                 approvers: Sequence[str] = (), policy: str = DEFAULT_POLICY) -> ReviewOutcome:
    """Apply an approver's answer: check four eyes first (``proposers`` and whoever triggered a run that saw one
    of the tasks may not approve; nothing is written when the check fails), then correct each approved task
    through the core (approver recorded) and append a ``reject`` event to each rejected one."""
    pending = review_candidates(engine, run_id)
    by_id = {t.id: t for t in pending}
    unknown = sorted(set(decision.approve + decision.reject) - set(by_id))
    if unknown:
        raise InvalidOperationError(f"tasks {unknown} are not awaiting review in run {run_id}; "
                                    f"those are {sorted(by_id) or 'none'}")
    everyone = set(proposers) | {p for task in pending for p in proposers_of(engine, task)}
    check_four_eyes(decision.approver, everyone, approvers=approvers, what=f"the corrections of run {run_id}")
    note = decision.note.strip() or "approved in the run's review"
    approved = 0
    for task_id in decision.approve:
        resolved = correction_executor.resolve_task(engine, task_id, "correct", decision.approver, note, policy)
        approved += 0 if resolved.task.unresolved else 1
    with engine.begin() as conn:
        for task_id in decision.reject:
            tasks.note_event(conn, task_id, action="reject", by=decision.approver,
                             note=decision.note.strip() or "rejected in the run's review", run_id=run_id,
                             values={"drift": str(by_id[task_id].drift)})
    return ReviewOutcome(pending=len(pending), approved=approved, rejected=len(decision.reject),
                         approver=decision.approver, note=decision.note.strip() or None)


def record_review_timeout(engine: Engine, run_id: int, *, waited: str) -> ReviewOutcome:
    """Nobody answered: correct nothing, append a ``review_timeout`` event to each task awaiting review."""
    pending = review_candidates(engine, run_id)
    with engine.begin() as conn:
        for task in pending:
            tasks.note_event(conn, task.id, action="review_timeout", by=f"run {run_id}",
                             note=f"no approval within {waited}; nothing corrected", run_id=run_id,
                             values={"drift": str(task.drift)})
    return ReviewOutcome(pending=len(pending), timed_out=True)


def record_review_refused(engine: Engine, run_id: int, decision: ReviewDecision, reason: str) -> ReviewOutcome:
    """The answer broke the four-eyes rule: correct nothing, record the refused attempt on each task."""
    pending = review_candidates(engine, run_id)
    with engine.begin() as conn:
        for task in pending:
            tasks.note_event(conn, task.id, action="approval_refused", by=decision.approver, note=reason,
                             run_id=run_id, values={"drift": str(task.drift)})
    return ReviewOutcome(pending=len(pending), approver=decision.approver, note=decision.note.strip() or None,
                         refused=reason)
