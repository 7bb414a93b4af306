"""The balance core's pure rules: input checks, the chain rule, the funds guard, the reconciliation plan,
and the named errors built from what the database returned. No I/O."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

from sqlalchemy.engine import Row

from reconciler.entry_kinds import check_kind as check_entry_kind
from reconciler.errors import (
    CustomerNotFoundError,
    IdempotencyConflictError,
    InsufficientFundsError,
    InvalidAmountError,
    InvalidOperationError,
)
from reconciler.money import MAX_AMOUNT, ZERO, is_drift, to_positive_money
from reconciler.vocabulary import check_policy as _check_policy

from .values import (
    MAX_KEY_LENGTH,
    OPERATIONS,
    BalanceChange,
    ChainLink,
    KeyedEntry,
    Reconciliation,
    ReconciliationPlan,
    Transfer,
)

_BIGINT_MAX = 2**63 - 1

def check_customer_id(value: object, *, name: str = "customer_id") -> int:
    """Return ``value`` as a customer id (an int within bigint), or raise a named error."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidOperationError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if not -_BIGINT_MAX - 1 <= value <= _BIGINT_MAX:
        raise CustomerNotFoundError(f"{name} {value} is outside bigint, so no such customer exists")
    return value


def check_kind(kind: object) -> str:
    """An entry kind is one of the list in ``expectations/vocabulary/entry_kinds.json``
    (:mod:`reconciler.entry_kinds`); anything else raises :class:`UnknownEntryKindError`."""
    return check_entry_kind(kind)


def check_key(key: object) -> str | None:
    """An idempotency key is None or non-empty text of at most ``MAX_KEY_LENGTH`` characters."""
    if key is None:
        return None
    if not isinstance(key, str) or not key.strip() or len(key) > MAX_KEY_LENGTH:
        raise InvalidOperationError(
            f"idempotency_key must be None or a non-empty text of at most {MAX_KEY_LENGTH} characters, got {key!r}")
    return key


def check_reference(reference: object) -> str | None:
    if reference is not None and not isinstance(reference, str):
        raise InvalidOperationError(f"reference must be None or text, got {type(reference).__name__} {reference!r}")
    return reference


def check_policy(policy: object) -> str:
    """One of :data:`reconciler.vocabulary.POLICIES`, else a named error."""
    return _check_policy(policy)


def signed_amount(amount: object, operation: object) -> Decimal:
    """The entry amount for ``operation`` (``add`` positive, ``subtract`` negative); ``amount`` must be > 0."""
    if operation not in OPERATIONS:
        raise InvalidOperationError(
            f"operation must be one of {', '.join(OPERATIONS)}, got {operation!r}; pass a positive amount "
            f"with 'subtract' to take money away")
    money = to_positive_money(amount)
    return money if operation == "add" else -money


def transfer_entry_keys(key: str | None) -> tuple[str | None, str | None]:
    """The two entries of a transfer carry keys derived from the transfer's key."""
    return (None, None) if key is None else (f"{key}:out", f"{key}:in")


def expected_balance_before(link: ChainLink) -> Decimal | None:
    """The balance the chain says the customer must have before a new entry, or None when nothing can be
    checked (the previous entry predates ``balance_after``)."""
    if link.anchor_balance is not None and link.anchor_entry_id == link.previous_entry_id:
        return link.anchor_balance
    if link.previous_entry_id is None:
        return ZERO
    return link.previous_balance_after


def chain_drift(balance_before: Decimal, link: ChainLink) -> Decimal | None:
    """``balance_before`` minus what the chain expects, or None when they agree (or nothing is checked)."""
    expected = expected_balance_before(link)
    if expected is None or expected == balance_before:
        return None
    return balance_before - expected


def shortfall(balance: Decimal, amount: Decimal, allow_negative: bool) -> Decimal | None:
    """How much a change of ``amount`` (signed) would take the balance below zero, when that is refused.

    Credits are never refused, even on a negative balance: they only bring it closer to zero."""
    if allow_negative or amount >= 0 or balance + amount >= 0:
        return None
    return -(balance + amount)


def check_result_balance(customer_id: int, balance: Decimal, amount: Decimal) -> Decimal:
    result = balance + amount
    if abs(result) > MAX_AMOUNT:
        raise InvalidAmountError(
            f"customer {customer_id}: balance {balance} {'+' if amount >= 0 else '-'} {abs(amount)} would be "
            f"{result}, beyond numeric(18,2) (at most {MAX_AMOUNT} in magnitude); nothing was written")
    return result


def plan_reconciliation(stored: Decimal, ledger_sum: Decimal, policy: str, tolerance: Decimal) -> ReconciliationPlan:
    """Decide a reconciliation from the values read under the lock (policy already checked)."""
    drift = stored - ledger_sum
    for name, value in (("ledger sum", ledger_sum), ("drift", drift)):
        if abs(value) > MAX_AMOUNT:
            raise InvalidAmountError(
                f"{name} {value} is beyond numeric(18,2), so the balance core can neither settle nor record it; "
                f"investigate the ledger (nothing was written)")
    if not is_drift(drift, tolerance):
        return ReconciliationPlan(drift, False, stored, None)
    if policy == "ledger":
        return ReconciliationPlan(drift, True, ledger_sum, None)
    return ReconciliationPlan(drift, True, stored, drift)


def _json(value: object) -> str:
    def default(item: object) -> Any:
        if isinstance(item, Decimal):
            return str(item)
        if isinstance(item, dt.datetime | dt.date):
            return item.isoformat()
        return str(item)

    return json.dumps(value, default=default, sort_keys=True)


def _not_found(customer_id: int) -> CustomerNotFoundError:
    return CustomerNotFoundError(
        f"customer {customer_id} does not exist in customers; check the id")


def _insufficient(customer_id: int, balance: Decimal, amount: Decimal, missing: Decimal) -> InsufficientFundsError:
    return InsufficientFundsError(
        f"customer {customer_id}: balance {balance} is too low to subtract {abs(amount)} (short by {missing}); "
        f"nothing was written. Credit the customer first, or pass allow_negative=True if an overdraft is intended")


def _conflict(key: str | None, first: str, asked: str) -> IdempotencyConflictError:
    return IdempotencyConflictError(
        f"idempotency key {key!r} was first used for {first}; this call asks for {asked}. A key names one "
        f"operation: use a new key for a new operation (nothing was written)")


def _replayed_change(key: str | None, customer_id: int, signed: Decimal, kind: str,
                     keyed: list[KeyedEntry]) -> BalanceChange:
    (entry,) = keyed
    asked = f"customer {customer_id}, amount {signed}, kind {kind!r}"
    first = f"customer {entry.customer_id}, amount {entry.amount}, kind {entry.kind!r} (entry {entry.id})"
    if (entry.customer_id, entry.amount, entry.kind) != (customer_id, signed, kind):
        raise _conflict(key, first, asked)
    if entry.balance_after is None:
        raise _conflict(key, first + " written outside the balance core (no balance_after)", asked)
    return BalanceChange(customer_id, signed, entry.balance_after - signed, entry.balance_after, entry.id,
                         key, True, kind)


def _replayed_transfer(key: str | None, from_id: int, to_id: int, money: Decimal, kinds: tuple[str, str],
                       keys: tuple[str | None, str | None], keyed: list[KeyedEntry]) -> Transfer:
    asked = f"a transfer of {money} from customer {from_id} to customer {to_id}, kind {kinds[0][:-4]!r}"
    first = ", ".join(f"entry {e.id} (customer {e.customer_id}, amount {e.amount}, kind {e.kind!r})" for e in keyed)
    expected = [(from_id, -money, kinds[0]), (to_id, money, kinds[1])]
    if len(keyed) != 2 or [(e.customer_id, e.amount, e.kind) for e in keyed] != expected:
        raise _conflict(key, first, asked)
    out, into = keyed
    if out.balance_after is None or into.balance_after is None:
        raise _conflict(key, first + " written outside the balance core", asked)
    outgoing = BalanceChange(from_id, -money, out.balance_after + money, out.balance_after, out.id, keys[0], True,
                             kinds[0])
    incoming = BalanceChange(to_id, money, into.balance_after - money, into.balance_after, into.id, keys[1], True,
                             kinds[1])
    return Transfer(from_id, to_id, money, outgoing, incoming, key, True)


def _replayed_reconciliation(key: str | None, customer_id: int, policy: str, row: Row[Any]) -> Reconciliation:
    if (row.key_customer_id, row.key_policy) != (customer_id, policy):
        raise _conflict(key, f"reconciling customer {row.key_customer_id} with policy {row.key_policy!r} "
                             f"(reconciliation {row.key_id})",
                        f"reconciling customer {customer_id} with policy {policy!r}")
    return Reconciliation(customer_id, policy, row.stored_before, row.ledger_sum, row.drift_before,
                          row.balance_after, row.entry_id, row.changed, True, int(row.key_id))

