"""Run options: validated on construction, errors name the option and the value, JSON round-trips."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler import pipeline
from reconciler.cli import run_commands
from reconciler.errors import InvalidAmountError, InvalidOperationError, ReconcilerError
from reconciler.pipeline import RunOptions, RunSummary


def test_defaults_are_the_documented_ones() -> None:
    """The defaults are DESIGN.md's: tolerance 0.01, limit 100.00, ratio 0.05, ledger policy, 2 workers."""
    options = RunOptions()
    assert options.tolerance == Decimal("0.01") and options.auto_correct_limit == Decimal("100.00")
    assert options.max_drift_ratio == Decimal("0.05") and options.policy == "ledger"
    assert options.workers == 2 and options.chunk_size == 10_000 and options.auto_correct and not options.dry_run


def test_cli_defaults_equal_the_pipeline_defaults() -> None:
    """The CLI's help defaults are the pipeline's constants."""
    assert Decimal(run_commands.TOLERANCE) == pipeline.DEFAULT_TOLERANCE
    assert run_commands.CHUNK_SIZE == pipeline.DEFAULT_CHUNK_SIZE
    assert Decimal(run_commands.AUTO_CORRECT_LIMIT) == pipeline.DEFAULT_AUTO_CORRECT_LIMIT
    assert Decimal(run_commands.MAX_DRIFT_RATIO) == pipeline.DEFAULT_MAX_DRIFT_RATIO
    assert run_commands.WORKERS == pipeline.DEFAULT_WORKERS


def test_from_params_parses_strings_like_an_orchestrator_sends_them() -> None:
    """Strings, lists and None (default) from Params become typed options."""
    options = RunOptions.from_params({
        "tolerance": "0.05", "chunk_size": "500", "customer_ids": "3, 1,2,3", "policy": "balance",
        "auto_correct": "false", "auto_correct_limit": "250", "max_drift_ratio": 0.2, "dry_run": True,
        "workers": 4, "from_id": None,
    })
    assert options.tolerance == Decimal("0.05") and options.chunk_size == 500
    assert options.customer_ids == (1, 2, 3) and options.policy == "balance"
    assert options.auto_correct is False and options.auto_correct_limit == Decimal("250.00")
    assert options.max_drift_ratio == Decimal("0.2") and options.dry_run and options.workers == 4


@given(
    tolerance=st.decimals(min_value=0, max_value=1000, places=2),
    chunk_size=st.integers(min_value=1, max_value=1_000_000),
    ids=st.none() | st.lists(st.integers(min_value=1, max_value=10**12), min_size=1, max_size=20),
    ratio=st.decimals(min_value=0, max_value=1, places=3),
    dry_run=st.booleans(),
)
def test_params_round_trip(tolerance: Decimal, chunk_size: int, ids: list[int] | None, ratio: Decimal,
                           dry_run: bool) -> None:
    """from_params(to_params()) gives the same options, and to_params is JSON-able (decimals as strings)."""
    options = RunOptions(tolerance=tolerance, chunk_size=chunk_size,
                         customer_ids=tuple(sorted(set(ids))) if ids else None, max_drift_ratio=ratio,
                         dry_run=dry_run)
    params = options.to_params()
    assert isinstance(params["tolerance"], str) and isinstance(params["max_drift_ratio"], str)
    assert RunOptions.from_params(params) == options


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("tolerance", "abc", "not a number"),
    ("tolerance", "-0.01", "0 or more"),
    ("tolerance", "0.001", "more than 2 decimal places"),
    ("tolerance", 0.01, "float"),
    ("chunk_size", 0, "between 1"),
    ("chunk_size", "ten", "whole number"),
    ("workers", 0, "between 1"),
    ("workers", 99, "between 1 and 16"),
    ("customer_ids", "1,,2", "empty item"),
    ("customer_ids", "1,a", "whole number"),
    ("customer_ids", "", "empty item"),
    ("policy", "cash", "ledger, balance"),
    ("auto_correct_limit", "-5", "0 or more"),
    ("max_drift_ratio", "1.5", "between 0 and 1"),
    ("max_drift_ratio", "x", "between 0 and 1"),
    ("dry_run", "perhaps", "true or false"),
])
def test_bad_values_are_refused_naming_the_option(key: str, value: object, expected: str) -> None:
    """Each bad value raises a ReconcilerError whose message names the option (as labelled) and says why."""
    with pytest.raises(ReconcilerError) as caught:
        RunOptions.from_params({key: value}, labels={key: f"--{key.replace('_', '-')}"})
    message = str(caught.value)
    assert f"--{key.replace('_', '-')}" in message
    assert expected in message
    assert isinstance(caught.value, InvalidOperationError | InvalidAmountError)


def test_range_and_ids_are_checked_together() -> None:
    """from_id > to_id is refused, and so is a range combined with explicit ids."""
    with pytest.raises(InvalidOperationError, match="greater than"):
        RunOptions.from_params({"from_id": 10, "to_id": 5})
    with pytest.raises(InvalidOperationError, match="not both"):
        RunOptions.from_params({"from_id": 1, "customer_ids": "2"})
    assert RunOptions.from_params({"from_id": 5, "to_id": 5}).from_id == 5


def test_unknown_options_are_refused() -> None:
    """A misspelt option is an error listing the known ones, never silently ignored."""
    with pytest.raises(InvalidOperationError, match=r"unknown run option.*tolerence"):
        RunOptions.from_params({"tolerence": "0.01"})


def test_direct_construction_is_validated_too() -> None:
    """RunOptions(...) validates like from_params (no invalid options object can exist)."""
    with pytest.raises(InvalidOperationError):
        RunOptions(workers=0)
    assert RunOptions(tolerance="0.10").tolerance == Decimal("0.10")  # type: ignore[arg-type]


def _summary(**changes: object) -> RunSummary:
    values: dict[str, object] = {
        "run_id": 1, "status": "succeeded", "customers_checked": 10, "drift_count": 0, "corrected": 0,
        "needs_review": 0, "open": 0, "total_abs_drift": Decimal("0.00"), "halted_reason": None, "report_path": None}
    values.update(changes)
    return RunSummary(**values)  # type: ignore[arg-type]


def test_exit_codes_follow_the_contract() -> None:
    """0 clean (drift all corrected counts as clean), 1 unresolved drift remains, 3 failed or halted."""
    assert _summary().exit_code == 0
    assert _summary(drift_count=2, corrected=2).exit_code == 0
    assert _summary(drift_count=2, open=1).exit_code == 1
    assert _summary(drift_count=2, needs_review=1).exit_code == 1
    assert _summary(status="halted", open=2).exit_code == 3
    assert _summary(status="failed").exit_code == 3


def test_summary_json_has_decimals_as_strings() -> None:
    """to_json carries the documented keys and total_abs_drift as an exact string."""
    payload = _summary(total_abs_drift=Decimal("12.30")).to_json()
    assert {"run_id", "status", "customers_checked", "drift_count", "corrected", "needs_review", "open",
            "total_abs_drift"} <= set(payload)
    assert payload["total_abs_drift"] == "12.30"


def test_task_spans_group_consecutive_chunks_and_never_cross_a_gap() -> None:
    """Spans join consecutive compared chunks up to the size limit; a missing (uncompared) chunk splits them."""
    import datetime as dt
    from types import SimpleNamespace

    at = dt.datetime(2026, 11, 26, tzinfo=dt.UTC)
    rows = [SimpleNamespace(chunk_index=i, first_id=i * 10 + 1, last_id=i * 10 + 10, planned_customers=10,
                            compared_at=at + dt.timedelta(seconds=i)) for i in (0, 1, 2, 4, 5)]
    spans = pipeline.group_spans(rows, max_customers=20)
    assert [(s.first_id, s.last_id) for s in spans] == [(1, 20), (21, 30), (41, 60)]
    assert spans[0].compared_at == at and spans[2].compared_at == at + dt.timedelta(seconds=4)
    assert pipeline.group_spans([], max_customers=20) == []
