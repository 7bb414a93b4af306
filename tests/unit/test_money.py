"""Money rules: exact two-place Decimals within numeric(18,2), floats refused by name, never rounded."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.errors import FloatAmountError, InvalidAmountError, NonPositiveAmountError, ReconcilerError
from reconciler.money import (
    CENT,
    MAX_AMOUNT,
    ZERO,
    format_money,
    is_drift,
    to_money,
    to_positive_money,
    to_tolerance,
)


@pytest.mark.parametrize(("value", "expected"), [
    ("12.34", Decimal("12.34")),
    (" 7 ", Decimal("7.00")),
    (5, Decimal("5.00")),
    (Decimal("1.5"), Decimal("1.50")),
    ("1.230", Decimal("1.23")),
    ("1e2", Decimal("100.00")),
    ("-3.10", Decimal("-3.10")),
    (str(MAX_AMOUNT), MAX_AMOUNT),
    (-MAX_AMOUNT, -MAX_AMOUNT),
])
def test_to_money_parses_exact_values(value: object, expected: Decimal) -> None:
    """str, int and Decimal become two-place Decimals without changing their value."""
    money = to_money(value)
    assert money == expected
    assert money.as_tuple().exponent == -2


def test_float_is_a_named_error_suggesting_the_exact_spelling() -> None:
    """A float is FloatAmountError (also an InvalidAmountError) whose message shows the Decimal to pass."""
    with pytest.raises(FloatAmountError, match=r"Decimal\('0.1'\)") as caught:
        to_money(0.1)
    assert isinstance(caught.value, InvalidAmountError)
    assert isinstance(caught.value, ReconcilerError)


@pytest.mark.parametrize("value", ["1.234", Decimal("0.001"), "1e-40", "-5.005"])
def test_more_than_two_places_is_refused_not_rounded(value: object) -> None:
    """A third significant decimal place is an error, never a silent rounding."""
    with pytest.raises(InvalidAmountError, match="more than 2 decimal places"):
        to_money(value)


@pytest.mark.parametrize("value", [
    "10000000000000000.00", -(MAX_AMOUNT + CENT), "1e30", Decimal("1E+40"),
    "123456789012345678901234567.891", "9999999999999999.994",
])
def test_beyond_numeric_18_2_is_refused(value: object) -> None:
    """Magnitudes beyond numeric(18,2) (however many digits) raise InvalidAmountError, not decimal errors."""
    with pytest.raises(InvalidAmountError, match=r"beyond numeric\(18,2\)"):
        to_money(value)


@pytest.mark.parametrize("value", ["abc", "", "NaN", "Infinity", Decimal("-Infinity"), None, True, [1], b"1"])
def test_non_numbers_are_named_errors(value: object) -> None:
    """Text that is not a number, NaN, infinities, bools and other types are InvalidAmountError."""
    with pytest.raises(InvalidAmountError):
        to_money(value)


def test_negative_zero_becomes_plain_zero() -> None:
    """'-0' is stored and printed as 0.00, never '-0.00'."""
    assert str(to_money("-0")) == "0.00"
    assert str(to_money(Decimal("-0.000"))) == "0.00"


@pytest.mark.parametrize("value", ["0", "0.00", "-0.01", -5])
def test_positive_money_refuses_zero_and_negative(value: object) -> None:
    """Amounts for add, subtract and transfer must be greater than zero."""
    with pytest.raises(NonPositiveAmountError, match="greater than 0"):
        to_positive_money(value)


def test_positive_money_accepts_one_cent() -> None:
    """The smallest positive amount is one cent."""
    assert to_positive_money("0.01") == CENT


def test_tolerance_is_zero_or_more() -> None:
    """A tolerance may be 0 but not negative."""
    assert to_tolerance("0") == ZERO
    assert to_tolerance(Decimal("0.01")) == CENT
    with pytest.raises(InvalidAmountError, match="tolerance must be 0 or more"):
        to_tolerance("-0.01")


@pytest.mark.parametrize(("drift", "flagged"), [
    ("0.00", False), ("0.01", False), ("-0.01", False), ("0.02", True), ("-0.02", True), ("100.00", True),
])
def test_is_drift_is_strictly_greater_than_tolerance(drift: str, flagged: bool) -> None:
    """With tolerance 0.01 a drift of exactly 0.01 (either sign) is not flagged; 0.02 is."""
    assert is_drift(Decimal(drift), Decimal("0.01")) is flagged


@pytest.mark.parametrize(("value", "text"), [
    (Decimal("1234567.5"), "1,234,567.50"), (Decimal("-0.5"), "-0.50"), (ZERO, "0.00"),
])
def test_format_money_for_finance(value: Decimal, text: str) -> None:
    """Thousands separators, two places, a leading minus."""
    assert format_money(value) == text


@given(st.integers(min_value=-int(MAX_AMOUNT * 100), max_value=int(MAX_AMOUNT * 100)))
def test_every_cent_value_in_range_round_trips_exactly(cents: int) -> None:
    """Any whole number of cents within numeric(18,2) survives Decimal and str parsing unchanged."""
    value = Decimal(cents).scaleb(-2)
    assert to_money(value) == value
    assert to_money(str(value)) == value
    assert to_money(format(value, "f")).as_tuple().exponent == -2
