"""The change feed's pure rules: which mode a run takes and why, what an orchestrated run asks for, ids split
into chunks."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.change_feed import FeedState, decide_mode, full_sweep_days_from_env, requested_mode, split_ids
from reconciler.errors import InvalidOperationError

NOW = dt.datetime(2026, 12, 1, 2, 0, tzinfo=dt.UTC)


def state(**changes: object) -> FeedState:
    values: dict[str, object] = {"triggers_present": True, "disabled_triggers": (), "point": "10:12:10",
                                 "last_full_sweep_at": NOW - dt.timedelta(days=1), "now": NOW}
    values.update(changes)
    return FeedState(**values)  # type: ignore[arg-type]


def test_incremental_when_the_feed_is_whole_and_a_point_exists() -> None:
    """With every feed trigger enabled and a verified point, incremental stays incremental."""
    assert decide_mode("incremental", state(), full_sweep_days=7, restricted=False).mode == "incremental"


@pytest.mark.parametrize(("changes", "words"), [
    ({"triggers_present": False}, "guard is off"),
    ({"disabled_triggers": ("reconciler_guard_feed_entries_insert",)}, "reconciler_guard_feed_entries_insert"),
    ({"point": None}, "no verified point"),
    ({"last_full_sweep_at": NOW - dt.timedelta(days=7)}, "full sweep is due"),
    ({"last_full_sweep_at": None}, "no full sweep"),
])
def test_incremental_falls_back_to_full_and_says_why(changes: dict[str, object], words: str) -> None:
    """Each reason an incremental run cannot be trusted makes it full, and the reason names it."""
    decision = decide_mode("incremental", state(**changes), full_sweep_days=7, restricted=False)
    assert decision.mode == "full" and words in decision.reason and decision.fell_back


def test_the_sweep_applies_only_to_scheduled_runs() -> None:
    """Without full_sweep_days (an explicit --incremental) an old sweep does not force a full run."""
    old = state(last_full_sweep_at=NOW - dt.timedelta(days=30))
    assert decide_mode("incremental", old, full_sweep_days=None, restricted=False).mode == "incremental"


def test_a_restricted_run_is_full_over_its_scope() -> None:
    """A range or ids make the run full over them (incremental covers everyone)."""
    assert decide_mode("incremental", state(), full_sweep_days=None, restricted=True).mode == "full"
    assert not decide_mode("full", state(), full_sweep_days=None, restricted=True).fell_back


@pytest.mark.parametrize(("param", "trigger", "expected"), [
    (None, "scheduled", ("incremental", 7)), (None, "manual", ("full", None)), ("", "manual", ("full", None)),
    ("incremental", "manual", ("incremental", None)), ("full", "scheduled", ("full", 7)),
])
def test_an_empty_mode_param_follows_the_trigger(param: object, trigger: str, expected: tuple[str, int | None]) -> None:
    """Scheduled runs default to incremental with the periodic sweep, manual runs to full."""
    assert requested_mode(param, trigger, {}) == expected


def test_the_sweep_interval_comes_from_the_environment() -> None:
    """RECONCILER_FULL_SWEEP_DAYS sets the interval; a bad value is an error naming it."""
    assert full_sweep_days_from_env({"RECONCILER_FULL_SWEEP_DAYS": "3"}) == 3
    with pytest.raises(InvalidOperationError, match="RECONCILER_FULL_SWEEP_DAYS"):
        full_sweep_days_from_env({"RECONCILER_FULL_SWEEP_DAYS": "0"})
    with pytest.raises(InvalidOperationError, match="incremental or full"):
        requested_mode("sometimes", "manual", {})


@given(ids=st.lists(st.integers(-1000, 1000)), size=st.integers(1, 50))
def test_split_ids_covers_every_id_once_in_order(ids: list[int], size: int) -> None:
    """The groups are sorted, at most chunk_size long, and together hold every distinct id exactly once."""
    groups = split_ids(ids, size)
    flat = [i for group in groups for i in group]
    assert flat == sorted(set(ids)) and all(0 < len(group) <= size for group in groups)
