"""The correction plan (pure): candidates + their drift re-read now + the guardrails -> what to do with each.

Invariants, each a Hypothesis law in tests/unit/test_correction_plan.py:
- a plan never corrects a drift above ``auto_correct_limit`` (a replay of a correction already in flight is
  the one exception: it completes what an earlier run started with the same idempotency key);
- a plan never corrects a drift that has vanished (re-read within ``tolerance``): that task is dismissed;
- a plan halts (every step :attr:`Action.HALT`, nothing corrected) exactly when ``drift_count /
  customers_checked > max_drift_ratio``.
The plan is data: :mod:`reconciler.correction_executor` carries it out, through the balance core. No I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

from reconciler.corrections import Decision, Guardrails, decide_correction, judge_drift_ratio
from reconciler.money import is_drift
from reconciler.tasks import Candidate


class Action(enum.StrEnum):
    """What the executor does with one task. A new action is a member here and a branch in the executor."""

    CORRECT = "correct"                    # through the core, with ``Step.policy``, re-verified under the lock
    REVIEW = "review"                      # open -> needs_review: a person must approve
    DISMISS_VANISHED = "dismiss_vanished"  # the drift re-read now is within tolerance: dismiss, never correct
    LEAVE = "leave"                        # nothing now (dry run, auto-correct off, already in review, ...)
    HALT = "halt"                          # the run halted on max_drift_ratio: nothing corrected


@dataclass(frozen=True)
class Step:
    """One task's step: its action, the drift decided on, the policy (for CORRECT), why, and what the run
    counts it as when it needs no core (``counted``; None when the core's outcome is counted instead)."""

    candidate: Candidate
    action: Action
    drift: Decimal
    reason: str
    policy: str | None = None
    counted: str | None = None
    replay: bool = False


@dataclass(frozen=True)
class CorrectionPlan:
    """The steps in candidate order, and the halt reason when the run halted."""

    steps: tuple[Step, ...]
    halted_reason: str | None = None

    def of(self, action: Action) -> list[Step]:
        return [step for step in self.steps if step.action is action]


def halt_reason(drift_count: int, customers_checked: int, guardrails: Guardrails) -> str | None:
    """Why corrections halt (too many customers drift at once), or None."""
    return judge_drift_ratio(drift_count, customers_checked, guardrails.max_drift_ratio)


def needs_current_drift(candidate: Candidate, guardrails: Guardrails) -> bool:
    """Whether the plan for ``candidate`` depends on its drift as it stands now (so read it first): a task
    the stored drift says to correct, or a correction in flight to replay."""
    if candidate.pending_policy is not None:
        return not guardrails.dry_run
    return decide_correction(candidate.drift, guardrails).decision is Decision.CORRECT


def plan_step(candidate: Candidate, current: Decimal | None, guardrails: Guardrails, policy: str) -> Step:
    """The step for one candidate; ``current`` is its drift re-read now (None when it was not re-read)."""
    if candidate.pending_policy is not None and not guardrails.dry_run:
        # An earlier run left this correction in flight: same key and policy, so the core returns the first
        # result, or corrects under the lock if it never ran.
        return Step(candidate, Action.CORRECT, current if current is not None else candidate.drift,
                    "correction left in flight", candidate.pending_policy, replay=True)
    drift = candidate.drift if current is None else current
    if current is not None and not is_drift(current, guardrails.tolerance):
        return Step(candidate, Action.DISMISS_VANISHED, current,
                    f"drift vanished: {current} now, within tolerance {guardrails.tolerance}; nothing corrected",
                    counted="vanished")
    verdict = decide_correction(drift, guardrails)
    if verdict.decision is Decision.CORRECT:
        return Step(candidate, Action.CORRECT, drift, verdict.reason, policy)
    if verdict.decision is Decision.NEEDS_REVIEW:
        action = Action.REVIEW if candidate.status == "open" else Action.LEAVE
        return Step(candidate, action, drift, verdict.reason, counted="needs_review")
    if candidate.pending_policy is not None:
        return Step(candidate, Action.LEAVE, drift, verdict.reason, counted="pending_left")
    counted = "would_correct" if verdict.decision is Decision.DRY_RUN else "left_open"
    return Step(candidate, Action.LEAVE, drift, verdict.reason, counted=counted)


def plan_corrections(candidates: Sequence[Candidate], current: Mapping[int, Decimal], guardrails: Guardrails,
                     *, policy: str, drift_count: int, customers_checked: int) -> CorrectionPlan:
    """The plan for ``candidates``; ``current`` maps customer id -> drift re-read now (only for those
    :func:`needs_current_drift` asked for; a customer missing from it is decided on its stored drift)."""
    halted = halt_reason(drift_count, customers_checked, guardrails)
    if halted is not None:
        return CorrectionPlan(tuple(Step(c, Action.HALT, c.drift, halted) for c in candidates), halted)
    steps = tuple(
        plan_step(c, current.get(c.customer_id) if needs_current_drift(c, guardrails) else None, guardrails, policy)
        for c in candidates)
    return CorrectionPlan(steps)
