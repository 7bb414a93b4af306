"""The balance core's values and tuning constants (frozen dataclasses; no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from reconciler.money import DEFAULT_TOLERANCE
from reconciler.vocabulary import ADJUSTMENT_KIND, POLICIES, Cause

DEFAULT_MAX_RETRIES = 5
DEFAULT_CACHE_MAX_ENTRIES = 100_000
#: Backoff before retry n (0-based): uniform in [0, min(cap, base * 2**n)] seconds.
RETRY_BACKOFF_BASE = 0.002
RETRY_BACKOFF_CAP = 0.05
OPERATIONS = ("add", "subtract")
REALTIME_CAUSE = Cause.CHAIN_MISMATCH.value
MAX_KEY_LENGTH = 200

__all__ = ["ADJUSTMENT_KIND", "DEFAULT_TOLERANCE", "POLICIES"]

@dataclass(frozen=True)
class BalanceChange:
    """One applied (or replayed) change of one customer's balance and the ledger entry recording it."""

    customer_id: int
    amount: Decimal  # signed: negative for a subtraction
    balance_before: Decimal
    balance_after: Decimal
    entry_id: int
    idempotency_key: str | None
    replayed: bool  # True when an idempotent retry returned the first result and wrote nothing
    kind: str = ""
    #: Set when the real-time check found the balance before this change off the chain (a drift task
    #: was opened or already open): balance before minus the previous ``balance_after``.
    chain_drift: Decimal | None = None


@dataclass(frozen=True)
class Transfer:
    """Money moved between two customers: the outgoing and the incoming change, one transaction."""

    from_id: int
    to_id: int
    amount: Decimal
    outgoing: BalanceChange
    incoming: BalanceChange
    idempotency_key: str | None
    replayed: bool


@dataclass(frozen=True)
class BalanceCheck:
    """The stored balance against the ledger sum; ``ok`` when ``abs(drift) <= tolerance``."""

    customer_id: int
    stored_balance: Decimal
    ledger_sum: Decimal
    drift: Decimal  # stored_balance - ledger_sum: positive when the balance is above the ledger
    ok: bool
    entry_count: int = 0
    tolerance: Decimal = DEFAULT_TOLERANCE


@dataclass(frozen=True)
class Reconciliation:
    """The outcome of one ``reconcile_balance`` call, as it stood under the row lock (the audit record)."""

    customer_id: int
    policy: str
    stored_before: Decimal
    ledger_sum: Decimal
    drift_before: Decimal
    balance_after: Decimal
    entry_id: int | None  # the reconciliation_adjustment entry (policy "balance"), else None
    changed: bool  # False when the drift had vanished (<= tolerance) under the lock
    replayed: bool = False
    reconciliation_id: int | None = None


@dataclass(frozen=True)
class ChainLink:
    """What the real-time check compares against: the latest entry before a change and the latest anchor."""

    previous_entry_id: int | None
    previous_balance_after: Decimal | None
    anchor_entry_id: int | None = None
    anchor_balance: Decimal | None = None  # None: the customer was never reconciled


@dataclass(frozen=True)
class ReconciliationPlan:
    """What ``reconcile_balance`` writes, decided from the values read under the lock."""

    drift: Decimal
    changed: bool
    balance_after: Decimal
    adjustment: Decimal | None  # the entry amount for policy "balance"



@dataclass(frozen=True)
class KeyedEntry:
    """An entry found by its idempotency key (what a replay compares against)."""

    id: int
    customer_id: int
    amount: Decimal
    kind: str
    balance_after: Decimal | None
