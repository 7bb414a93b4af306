"""Exact money: every amount is a ``Decimal`` with exactly two places within numeric(18,2).

Floats never become money here (beancount's rule: "never use floating-point in an accounting
system"): a float is a :class:`FloatAmountError`, a third decimal place is an error, never a
silent rounding.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from reconciler.errors import FloatAmountError, InvalidAmountError, NonPositiveAmountError

CENT = Decimal("0.01")
ZERO = Decimal("0.00")
#: A customer drifts when abs(drift) is strictly greater than this (DESIGN.md); the ONE default.
DEFAULT_TOLERANCE = CENT
#: numeric(18,2) holds 16 integer digits.
MAX_AMOUNT = Decimal("9999999999999999.99")

MoneyInput = Decimal | int | str


def to_money(value: object, *, name: str = "amount") -> Decimal:
    """Return ``value`` as a two-place Decimal, or raise a named error saying why it is not money."""
    if isinstance(value, bool):
        raise InvalidAmountError(f"{name} must be a Decimal, int or str, got bool {value!r}")
    if isinstance(value, float):
        raise FloatAmountError(
            f"{name} {value!r} is a float, which cannot hold cents exactly; "
            f"pass Decimal({str(value)!r}) or the string {str(value)!r} instead"
        )
    if isinstance(value, Decimal):
        number = value
    elif isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, str):
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            raise InvalidAmountError(f"{name} {value!r} is not a number; write it like '12.34'") from None
    else:
        raise InvalidAmountError(f"{name} must be a Decimal, int or str, got {type(value).__name__} {value!r}")
    if not number.is_finite():
        raise InvalidAmountError(f"{name} {value!r} is not a finite number")
    # Range first: quantizing a huge number would overflow the decimal context (decimal.InvalidOperation).
    if abs(number) > MAX_AMOUNT:
        raise InvalidAmountError(f"{name} {value!r} is beyond numeric(18,2) (at most {MAX_AMOUNT} in magnitude)")
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int)  # finite numbers have an int exponent
    if exponent < -2 and number != number.quantize(CENT):
        raise InvalidAmountError(
            f"{name} {value!r} has more than 2 decimal places; round it yourself to cents "
            f"(e.g. {number.quantize(CENT)}) so no money is lost silently"
        )
    money = number.quantize(CENT)
    return ZERO if money.is_zero() else money  # no "-0.00" in balances or reports


def to_positive_money(value: object, *, name: str = "amount") -> Decimal:
    """Return ``value`` as money that is strictly greater than zero."""
    money = to_money(value, name=name)
    if money <= 0:
        raise NonPositiveAmountError(
            f"{name} must be greater than 0, got {money}; use the other operation to move money the other way"
        )
    return money


def to_tolerance(value: object) -> Decimal:
    """Return a drift tolerance: money that is zero or more."""
    money = to_money(value, name="tolerance")
    if money < 0:
        raise InvalidAmountError(f"tolerance must be 0 or more, got {money}")
    return money


def is_drift(drift: Decimal, tolerance: Decimal) -> bool:
    """A customer drifts when the absolute drift is strictly greater than the tolerance."""
    return abs(drift) > tolerance


def format_money(value: Decimal) -> str:
    """Finance formatting: thousands separators, two places, a leading minus for negatives."""
    return f"{value.quantize(CENT):,}"
