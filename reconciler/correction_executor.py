"""The correction executor: carries out a :class:`~reconciler.correction_plan.CorrectionPlan`, correcting
through the balance core only, and resolving tasks by hand the same way.

Invariant: the flow is "record in one transaction (reviews, in-flight markers, vanished dismissals) ->
correct each task through the core (one core transaction each, under the customer's row lock) -> record the
outcomes in one transaction". A crash between the two leaves the tasks marked in flight, and the next run
replays them with the same idempotency key. Every task write goes through :mod:`reconciler.tasks`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal

from sqlalchemy import Connection, Engine

from reconciler import tasks
from reconciler.audit import AuditEvent, append_audit
from reconciler.correction_plan import Action, CorrectionPlan, Step, plan_corrections
from reconciler.corrections import (
    CorrectionResult,
    Guardrails,
    Outcome,
    TaskRef,
    apply_correction,
    check_policy,
    correction_engine,
)
from reconciler.errors import InvalidOperationError, TaskStateError
from reconciler.money import DEFAULT_TOLERANCE, MAX_AMOUNT
from reconciler.vocabulary import DEFAULT_POLICY, POLICIES

Correct = Callable[[TaskRef, str], CorrectionResult]
Prepare = Callable[[Connection], None]

#: How each outcome of the core is recorded on its task (``tasks.record_outcome``) and counted by the run.
#: A new outcome is one line here and one member of :class:`reconciler.corrections.Outcome`.
_RECORDED_AS: Mapping[Outcome, str] = {Outcome.CORRECTED: "corrected", Outcome.VANISHED: "vanished",
                                       Outcome.DEFERRED: "deferred", Outcome.BUSY: "busy"}


def _no_prepare(conn: Connection) -> None:
    return None


@dataclass(frozen=True)
class Execution:
    """What carrying out a plan did: the counts and the core's result per corrected task."""

    counts: Counter[str]
    results: Mapping[int, CorrectionResult] = field(default_factory=dict)
    already_resolved: frozenset[int] = frozenset()


def execute_plan(engine: Engine, plan: CorrectionPlan, correct: Correct, *, by: str, run_id: int | None,
                 notes: Callable[[Step], str], tolerance: Decimal = DEFAULT_TOLERANCE, workers: int = 1,
                 prepare: Prepare = _no_prepare, approved_by: str | None = None) -> Execution:
    """Carry out ``plan``: reviews, in-flight markers and vanished dismissals in one transaction, each
    correction through ``correct`` (the core), then the outcomes in one transaction."""
    counts: Counter[str] = Counter()
    if plan.halted_reason is not None:
        return Execution(counts)
    for step in plan.steps:
        if step.action is Action.LEAVE and step.counted is not None:
            counts[step.counted] += 1
    reviews = plan.of(Action.REVIEW)
    planned = plan.of(Action.CORRECT)
    with engine.begin() as conn:
        prepare(conn)
        tasks.mark_many_needs_review(conn, [(s.candidate.task_id, s.drift, s.reason) for s in reviews], by=by,
                                     run_id=run_id)
        counts["needs_review"] += len(reviews)
        for step in plan.of(Action.DISMISS_VANISHED):
            dismissed = tasks.dismiss_if_clean(conn, step.candidate.task_id, tolerance=tolerance, by=by,
                                               note=step.reason, run_id=run_id)
            counts["vanished" if dismissed else "left_open"] += 1
        marked = tasks.mark_many_pending(conn, [(s.candidate.task_id, s.policy or DEFAULT_POLICY) for s in planned],
                                         by=by, run_id=run_id)
    skipped = frozenset(s.candidate.task_id for s in planned if s.candidate.task_id not in marked)
    counts["already_resolved"] += len(skipped)
    planned = [s for s in planned if s.candidate.task_id in marked]

    def one(step: Step) -> CorrectionResult:
        return correct(TaskRef(step.candidate.task_id, step.candidate.customer_id, run_id), step.policy or "")

    if len(planned) <= 1 or workers <= 1:
        results = [one(step) for step in planned]
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="correct") as pool:
            results = list(pool.map(one, planned))
    with engine.begin() as conn:
        prepare(conn)
        for step, result in zip(planned, results, strict=True):
            record(conn, result, by=by, note=notes(step), approved_by=approved_by)
            counts[_RECORDED_AS[result.outcome]] += 1
    return Execution(counts, {r.task.task_id: r for r in results}, skipped)


def record(conn: Connection, result: CorrectionResult, *, by: str, note: str | None,
           approved_by: str | None = None) -> bool:
    """Write the core's answer on its task, through the lifecycle."""
    values = result.values()
    if approved_by is not None:
        values["approved_by"] = approved_by
    rec = result.reconciliation
    return tasks.record_outcome(conn, result.task.task_id, outcome=_RECORDED_AS[result.outcome], by=by, note=note,
                                reason=result.reason, run_id=result.task.run_id, values=values,
                                entry_id=rec.entry_id if rec is not None else None)


# ---- by hand (``reconciler tasks resolve``) ---------------------------------------------------------------

ACTIONS = tasks.ACTIONS


def correct_task(engine: Engine, manager: object, task: TaskRef, *, policy: str, tolerance: Decimal, by: str,
                 note: str | None = None, approved_by: str | None = None, status: str = "open",
                 drift: Decimal = Decimal("0.00"), pending_policy: str | None = None) -> CorrectionResult | None:
    """Correct one task through the core (planned like a run's, approved: no limit) and record the outcome;
    None when the task was already resolved."""
    from reconciler.balances import BalanceManager  # noqa: PLC0415  (the core; imported where it is used)

    assert isinstance(manager, BalanceManager)
    candidate = tasks.Candidate(task.task_id, task.customer_id, drift, status, pending_policy)
    approved = Guardrails(auto_correct_limit=MAX_AMOUNT, max_drift_ratio=Decimal(1), tolerance=tolerance)
    plan = plan_corrections([candidate], {}, approved, policy=policy, drift_count=0, customers_checked=0)
    execution = execute_plan(
        engine, plan,
        lambda ref, chosen: apply_correction(manager, ref, policy=chosen, tolerance=tolerance,
                                             audit={"by": by, "approved_by": approved_by}),
        by=by, run_id=task.run_id, notes=lambda step: note or step.reason, tolerance=tolerance,
        approved_by=approved_by)
    return execution.results.get(task.task_id)


@dataclass(frozen=True)
class Resolved:
    """What ``resolve_task`` did: the task after, and the correction when there was one."""

    task: tasks.TaskView
    correction: CorrectionResult | None


def _required_text(value: str, name: str) -> str:
    cleaned = value.strip() if isinstance(value, str) else ""
    if not cleaned:
        raise InvalidOperationError(f"{name} must be a non-empty text (who approves, and why), got {value!r}")
    return cleaned


def resolve_task(engine: Engine, task_id: int, action: str, by: str, note: str,
                 policy: str = DEFAULT_POLICY, *, tolerance: Decimal = DEFAULT_TOLERANCE) -> Resolved:
    """Resolve an unresolved task by hand: ``dismiss`` closes it; ``correct`` corrects it through the core
    (re-verified under the row lock; no auto_correct_limit: a person approved it, recorded as ``approved_by``
    with the note). A correction an earlier run left in flight is completed with that run's policy. A
    resolved task raises :class:`TaskStateError`; a lock timeout leaves the task as it was (try again)."""
    if action not in ACTIONS:
        raise InvalidOperationError(f"action must be one of {', '.join(ACTIONS)}, got {action!r}")
    by = _required_text(by, "by")
    note = _required_text(note, "note")
    check_policy(policy)
    with engine.begin() as conn:
        current = tasks.get_task(conn, task_id, for_update=True)
        if not current.unresolved:
            raise TaskStateError(
                f"task {task_id} is already {current.status} (at {current.resolved_at:%Y-%m-%d %H:%M:%S%z}); "
                f"a resolved task never changes. A new drift of customer {current.customer_id} opens a new task"
            )
        if action == "dismiss":
            tasks.dismiss_by_hand(conn, task_id, by=by, note=note, drift=current.drift)
        else:
            pending = current.resolution.get("pending")
            if isinstance(pending, Mapping) and pending.get("policy") in POLICIES:
                policy = str(pending["policy"])  # a correction left in flight is completed as it was started
            # The person's approval is on the chain (at this commit) before the core acts on it.
            append_audit(conn, AuditEvent("approval", by, {
                "task_id": task_id, "customer_id": current.customer_id, "action": "correct", "policy": policy,
                "note": note, "status": current.status, "drift": str(current.drift)}))
    correction: CorrectionResult | None = None
    if action == "correct":
        from reconciler.balances import BalanceManager  # noqa: PLC0415  (written by the balance core)

        with correction_engine(engine, pool_size=1) as safe_engine:
            manager = BalanceManager(safe_engine)
            correction = correct_task(engine, manager, TaskRef(task_id, current.customer_id, None), policy=policy,
                                      tolerance=tolerance, by=by, note=note, approved_by=by,
                                      status=current.status, drift=current.drift)
        if correction is None:
            with engine.connect() as conn:
                latest = tasks.get_task(conn, task_id)
            raise TaskStateError(f"task {task_id} was resolved by someone else meanwhile (now {latest.status})")
    with engine.connect() as conn:
        return Resolved(tasks.get_task(conn, task_id), correction)


__all__ = ["Execution", "Resolved", "correct_task", "execute_plan", "record", "resolve_task"]
