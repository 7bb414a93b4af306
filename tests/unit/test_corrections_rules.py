"""The guardrails as pure rules: what a run does with a drift, and when it halts."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.corrections import (
    Decision,
    Guardrails,
    check_policy,
    correction_key,
    decide_correction,
    is_transient,
    judge_drift_ratio,
)
from reconciler.errors import InvalidOperationError, TransientDatabaseError

DEFAULT = Guardrails()


def test_a_drift_within_the_limit_is_corrected() -> None:
    """With the default guardrails a drift of 100.00 (exactly the limit) is corrected automatically."""
    assert decide_correction(Decimal("100.00"), DEFAULT).decision is Decision.CORRECT
    assert decide_correction(Decimal("-100.00"), DEFAULT).decision is Decision.CORRECT


def test_a_drift_beyond_the_limit_needs_review_whatever_its_sign() -> None:
    """abs(drift) > auto_correct_limit sends the task to needs_review, and the reason names both values."""
    for drift in (Decimal("100.01"), Decimal("-100.01")):
        verdict = decide_correction(drift, DEFAULT)
        assert verdict.decision is Decision.NEEDS_REVIEW
        assert "100.01" in verdict.reason and "100.00" in verdict.reason


def test_dry_run_never_corrects() -> None:
    """A dry run leaves a correctable drift open (nothing written), but still flags one beyond the limit."""
    guard = Guardrails(dry_run=True)
    assert decide_correction(Decimal("5.00"), guard).decision is Decision.DRY_RUN
    assert decide_correction(Decimal("500.00"), guard).decision is Decision.NEEDS_REVIEW


def test_auto_correct_off_leaves_tasks_open() -> None:
    """With auto_correct off nothing is corrected automatically."""
    guard = Guardrails(auto_correct=False)
    assert decide_correction(Decimal("5.00"), guard).decision is Decision.MANUAL


def test_a_halted_run_decides_nothing_else() -> None:
    """A halted run corrects nothing and flags nothing, whatever the drift."""
    for drift in (Decimal("1.00"), Decimal("1000.00")):
        assert decide_correction(drift, DEFAULT, halted=True).decision is Decision.HALTED


def test_drift_ratio_halts_strictly_above_the_ratio() -> None:
    """5 of 100 drifting is exactly 0.05 and does not halt; 6 of 100 does, with a reason naming the figures."""
    assert judge_drift_ratio(5, 100, Decimal("0.05")) is None
    reason = judge_drift_ratio(6, 100, Decimal("0.05"))
    assert reason is not None and "6 of 100" in reason and "--max-drift-ratio" in reason


@given(drifting=st.integers(min_value=0, max_value=10_000), extra=st.integers(min_value=0, max_value=10_000))
def test_ratio_one_never_halts(drifting: int, extra: int) -> None:
    """max_drift_ratio 1 disables the halt: no count of drifting customers can exceed all of them."""
    assert judge_drift_ratio(drifting, drifting + extra, Decimal("1")) is None


def test_nothing_checked_never_halts() -> None:
    """An empty run (no customers) does not halt even with ratio 0."""
    assert judge_drift_ratio(0, 0, Decimal("0")) is None
    assert judge_drift_ratio(0, 10, Decimal("0")) is None
    assert judge_drift_ratio(1, 10, Decimal("0")) is not None


@given(st.decimals(min_value=Decimal("-1000000"), max_value=Decimal("1000000"), places=2))
def test_decision_depends_only_on_the_limit_when_correcting(drift: Decimal) -> None:
    """With auto-correct on, a drift is corrected exactly when abs(drift) <= auto_correct_limit."""
    decision = decide_correction(drift, DEFAULT).decision
    assert (decision is Decision.CORRECT) == (abs(drift) <= DEFAULT.auto_correct_limit)


def test_correction_key_is_derived_from_the_task() -> None:
    """The same task always gets the same idempotency key, different tasks different keys."""
    assert correction_key(7) == correction_key(7) == "reconcile:task:7"
    assert correction_key(7) != correction_key(8)


def test_unknown_policy_is_refused_with_the_allowed_ones() -> None:
    """A policy other than ledger or balance is an InvalidOperationError naming both."""
    assert check_policy("balance") == "balance"
    with pytest.raises(InvalidOperationError, match="ledger, balance"):
        check_policy("cash")


def test_transient_failures_are_recognised() -> None:
    """Persistent serialization failures are transient; an ordinary error is not."""
    assert is_transient(TransientDatabaseError("x"))
    assert not is_transient(ValueError("x"))


def test_busy_streak_counts_consecutive_runs_that_found_the_customer_locked() -> None:
    """Trailing busy events of distinct runs count; other events of those runs do not break the streak; an
    event of another run does."""
    from reconciler.tasks import busy_streak

    events = [{"action": "open", "run_id": 1}, {"action": "busy", "run_id": 1},
              {"action": "update", "run_id": 2}, {"action": "busy", "run_id": 2}, {"action": "busy", "run_id": 3}]
    assert busy_streak(events) == 3
    assert busy_streak([*events, {"action": "defer", "run_id": 4}]) == 0
    assert busy_streak([{"action": "open", "run_id": 5}, {"action": "defer", "run_id": 5},
                        {"action": "busy", "run_id": 6}]) == 1
    assert busy_streak([]) == 0
