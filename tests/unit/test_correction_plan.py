"""The correction planner's laws (pure, Hypothesis): no correction above the limit, none of a vanished drift,
a halt exactly when the drift ratio is exceeded; and the plan never changes what it was given."""

from __future__ import annotations

import copy
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from reconciler.correction_plan import Action, needs_current_drift, plan_corrections
from reconciler.corrections import Guardrails
from reconciler.tasks import Candidate

CENTS = st.integers(min_value=-50_000, max_value=50_000).map(lambda c: Decimal(c) / 100)
LIMITS = st.integers(min_value=0, max_value=20_000).map(lambda c: Decimal(c) / 100)
TOLERANCES = st.sampled_from([Decimal("0.00"), Decimal("0.01"), Decimal("0.05")])
RATIOS = st.sampled_from([Decimal("0"), Decimal("0.05"), Decimal("0.5"), Decimal("1")])


@st.composite
def candidates(draw: st.DrawFn) -> list[Candidate]:
    count = draw(st.integers(min_value=0, max_value=12))
    return [Candidate(task_id=i + 1, customer_id=100 + i, drift=draw(CENTS),
                      status=draw(st.sampled_from(["open", "needs_review"])),
                      pending_policy=draw(st.sampled_from([None, None, None, "ledger", "balance"])))
            for i in range(count)]


@st.composite
def guardrails(draw: st.DrawFn) -> Guardrails:
    return Guardrails(dry_run=draw(st.booleans()), auto_correct=draw(st.booleans()),
                      auto_correct_limit=draw(LIMITS), max_drift_ratio=draw(RATIOS), tolerance=draw(TOLERANCES))


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[Candidate], dict[int, Decimal], Guardrails, int, int]:
    batch = draw(candidates())
    current = {c.customer_id: draw(st.one_of(CENTS, st.just(Decimal("0.00")))) for c in batch
               if draw(st.booleans())}
    checked = draw(st.integers(min_value=0, max_value=1_000))
    drifting = draw(st.integers(min_value=0, max_value=max(checked, 0)))
    return batch, current, draw(guardrails()), drifting, checked


def _plan(batch: list[Candidate], current: dict[int, Decimal], rails: Guardrails, drifting: int,
          checked: int):  # type: ignore[no-untyped-def]
    return plan_corrections(batch, current, rails, policy="ledger", drift_count=drifting, customers_checked=checked)


@given(scenarios())
def test_a_plan_never_corrects_above_the_limit(scenario: tuple) -> None:  # type: ignore[type-arg]
    """Every correction the plan makes (other than completing one already in flight) is within the limit."""
    batch, current, rails, drifting, checked = scenario
    for step in _plan(batch, current, rails, drifting, checked).of(Action.CORRECT):
        assert step.replay or abs(step.drift) <= rails.auto_correct_limit


@given(scenarios())
def test_a_plan_never_corrects_a_vanished_drift(scenario: tuple) -> None:  # type: ignore[type-arg]
    """A task whose drift re-read now is within tolerance is never corrected (unless a correction of it is
    already in flight, which the core completes or finds vanished under the lock)."""
    batch, current, rails, drifting, checked = scenario
    plan = _plan(batch, current, rails, drifting, checked)
    for step in plan.steps:
        now = current.get(step.candidate.customer_id)
        asked = needs_current_drift(step.candidate, rails)
        if asked and now is not None and abs(now) <= rails.tolerance and not step.replay:
            assert step.action is not Action.CORRECT
            assert step.action in (Action.DISMISS_VANISHED, Action.HALT) or step.candidate.pending_policy is not None
            assert (step.action is Action.HALT) is (plan.halted_reason is not None)


@given(scenarios())
def test_a_plan_halts_exactly_when_the_ratio_is_exceeded(scenario: tuple) -> None:  # type: ignore[type-arg]
    """Halted (every step HALT, nothing corrected) iff drift_count / customers_checked > max_drift_ratio."""
    batch, current, rails, drifting, checked = scenario
    plan = _plan(batch, current, rails, drifting, checked)
    exceeded = checked > 0 and drifting > 0 and Decimal(drifting) / Decimal(checked) > rails.max_drift_ratio
    assert (plan.halted_reason is not None) is exceeded
    if exceeded:
        assert all(step.action is Action.HALT for step in plan.steps)
    else:
        assert not plan.of(Action.HALT)


@given(scenarios())
def test_a_plan_has_one_step_per_candidate_and_changes_nothing_it_was_given(scenario: tuple) -> None:  # type: ignore[type-arg]
    """One step per candidate, in order; the inputs are left exactly as they were."""
    batch, current, rails, drifting, checked = scenario
    before = copy.deepcopy((batch, current, rails))
    plan = _plan(batch, current, rails, drifting, checked)
    assert [s.candidate for s in plan.steps] == batch
    assert (batch, current, rails) == before


@given(scenarios())
def test_a_dry_run_plan_corrects_nothing(scenario: tuple) -> None:  # type: ignore[type-arg]
    """With dry_run no step is a correction and no task is dismissed by the plan's correction path."""
    batch, current, rails, drifting, checked = scenario
    dry = Guardrails(dry_run=True, auto_correct=rails.auto_correct, auto_correct_limit=rails.auto_correct_limit,
                     max_drift_ratio=rails.max_drift_ratio, tolerance=rails.tolerance)
    assert not _plan(batch, current, dry, drifting, checked).of(Action.CORRECT)


def test_a_large_open_drift_goes_to_review_and_a_small_one_is_corrected() -> None:
    """Scenario: two open tasks, 250.00 and 3.00 with the default limit 100.00: review one, correct the other."""
    batch = [Candidate(1, 10, Decimal("250.00"), "open", None), Candidate(2, 11, Decimal("3.00"), "open", None)]
    plan = plan_corrections(batch, {11: Decimal("3.00")}, Guardrails(), policy="balance", drift_count=2,
                            customers_checked=100)
    assert [(s.action, s.policy) for s in plan.steps] == [(Action.REVIEW, None), (Action.CORRECT, "balance")]
