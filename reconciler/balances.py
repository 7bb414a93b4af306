"""The balance core: the only writer of ``customers.balance`` and ``customer_ledger_entries``.

Invariant kept: for every customer, ``customers.balance == SUM(customer_ledger_entries.amount)``, and
each entry's ``balance_after`` is the customer's balance right after that entry, i.e. the running sum
of the customer's entries in id order (the *balance_after chain*). Every change keeps both: it is ONE
transaction that locks the customer row, changes the balance and appends the entry carrying its
``balance_after``, and commits or rolls back whole.

How each operation keeps round trips low (the throughput target is >= 0.7x a raw single-statement
baseline; round trips and client CPU per statement decide it, as measured in bench/README.md):

- ``update_balance`` first tries ONE statement in autocommit (its own transaction, one round trip): a
  CTE whose ``UPDATE ... RETURNING`` takes the customer's row lock (the lock ``SELECT ... FOR NO KEY UPDATE``
  takes; after a lock wait PostgreSQL re-checks the WHERE against the newest committed row, so no
  update is lost) and whose ``INSERT`` appends the entry with the returned balance as ``balance_after``.
  Its WHERE changes the balance only when the funds guard holds, the idempotency key is unused and the
  balance equals what the chain expects. Otherwise it writes nothing, and the *locked path* decides with
  exact values in one transaction: ``SELECT ... FOR NO KEY UPDATE``, then one CTE that updates the balance,
  appends the entry and reads the chain with a snapshot taken after the lock was granted (plus the
  realtime task when the chain is broken). Bad input, refused debits, contention on one customer and
  chain mismatches take the locked path; ordinary payments never do.
- ``transfer`` locks both customers with one ``SELECT ... ORDER BY id FOR NO KEY UPDATE`` (always in id
  order, so two opposite transfers cannot deadlock), then one CTE updates both and appends both entries.
- ``reconcile_balance`` locks the customer (``SELECT ... FOR NO KEY UPDATE``; with ``nowait=True`` a
  customer locked by another session raises :class:`CustomerBusyError` at once), re-reads the ledger sum
  under the lock, then settles the balance and logs the reconciliation in one CTE.
- Every row lock is ``FOR NO KEY UPDATE``, the lock a plain UPDATE takes: the core never changes a key, so
  it never blocks another session's KEY SHARE (a foreign key check on a row referencing the customer).
- Each call checks a connection out of the engine's pool (plus its pre-ping, when configured); a worker
  loop can hold one connection for many calls with ``with manager.pinned() as core: ...``.

Real-time validation is O(1) per change (one backward step on the ``(customer_id, id)`` index): the
balance before the change must equal the previous entry's ``balance_after`` (0 for a customer without
entries; entries with NULL ``balance_after``, written before the core existed, are not checked). A
mismatch never blocks the payment: it proceeds, and a drift task with source ``realtime`` is opened in
the same transaction (at most one unresolved task per customer; an existing one is kept). The fast
statement's snapshot predates its lock wait, so it never judges a mismatch itself: it only declines to
write, and the locked path re-reads the chain after the lock is granted. Contention therefore never
raises a false alarm. (A fast statement that matched a stale chain entry would need a concurrent writer
outside the core that appended an entry without changing the balance; the nightly SUM comparison, not
this tripwire, is the authority for such drift.)

Chain anchors: policy ``ledger`` sets the balance to the ledger sum without writing an entry, so the
latest ``balance_after`` may legitimately differ from the balance afterwards (say a duplicated entry
was the cause). Each reconciliation is logged in ``reconciler.balance_reconciliations`` with
``chain_entry_id`` (the customer's latest entry at that moment) and the accepted ``balance_after``; while
no newer entry exists, the real-time check compares against that anchor instead of the entry. The same
row is the reconciliation's audit record (old and new values) and its idempotency memory.

Idempotency: an entry's ``idempotency_key`` is unique in the database. The same key again returns the
first result (``replayed=True``) and writes nothing; the same key for a different customer, amount,
operation or kind raises :class:`IdempotencyConflictError`. Two callers racing with one key are
decided by the unique index: the loser's transaction rolls back whole and it returns the winner's result.

The guard (``reconciler.guard``) recognises these writes as the core's: every UPDATE and INSERT here has
``CORE_WRITE_MARK`` in its WHERE (a transaction-local ``set_config`` evaluated before its first row is
written, no extra round trip), so the guard's triggers queue nothing for them.

Serialization failures (40001) and deadlocks (40P01) are retried up to ``max_retries`` times with a
short jittered backoff, then :class:`TransientDatabaseError`; every other database error propagates.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NamedTuple, TypeVar

import psycopg
from sqlalchemy import Connection, Engine, TextClause, text
from sqlalchemy.engine import Row
from sqlalchemy.exc import DBAPIError

from reconciler.db import describe_url
from reconciler.errors import (
    CustomerBusyError,
    CustomerNotFoundError,
    DatabaseUnavailableError,
    IdempotencyConflictError,
    InsufficientFundsError,
    InvalidAmountError,
    InvalidOperationError,
    TransientDatabaseError,
)
from reconciler.money import MAX_AMOUNT, ZERO, is_drift, to_positive_money, to_tolerance
from reconciler.row_locks import describe_lockers, row_lockers

log = logging.getLogger(__name__)

DEFAULT_MAX_RETRIES = 5
DEFAULT_TOLERANCE = Decimal("0.01")
DEFAULT_CACHE_MAX_ENTRIES = 100_000
#: Backoff before retry n (0-based): uniform in [0, min(cap, base * 2**n)] seconds.
RETRY_BACKOFF_BASE = 0.002
RETRY_BACKOFF_CAP = 0.05
OPERATIONS = ("add", "subtract")
POLICIES = ("ledger", "balance")
ADJUSTMENT_KIND = "reconciliation_adjustment"
REALTIME_CAUSE = "chain_mismatch"
MAX_KEY_LENGTH = 200
_BIGINT_MAX = 2**63 - 1
_CURSOR_INFO_KEY = "reconciler.balances.cursor"
#: How the guard (``reconciler.guard``) recognises the core's writes: every UPDATE and INSERT below has
#: CORE_WRITE_MARK in its WHERE, an initplan that sets the transaction-local setting before the statement
#: writes its first row; the guard's triggers skip rows written while it says "core".
WRITER_SETTING = "reconciler.writer"
CORE_WRITER = "core"
CORE_WRITE_MARK = f"(SELECT set_config('{WRITER_SETTING}', '{CORE_WRITER}', true)) = '{CORE_WRITER}'"

T = TypeVar("T")


# --------------------------------------------------------------------------------------------------
# Values


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


# --------------------------------------------------------------------------------------------------
# Pure rules


def check_customer_id(value: object, *, name: str = "customer_id") -> int:
    """Return ``value`` as a customer id (an int within bigint), or raise a named error."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidOperationError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if not -_BIGINT_MAX - 1 <= value <= _BIGINT_MAX:
        raise CustomerNotFoundError(f"{name} {value} is outside bigint, so no such customer exists")
    return value


def check_kind(kind: object) -> str:
    """An entry kind is non-empty text (e.g. ``payment``, ``refund``)."""
    if not isinstance(kind, str) or not kind.strip():
        raise InvalidOperationError(f"kind must be a non-empty text naming the entry (e.g. 'payment'), got {kind!r}")
    return kind


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
    if policy not in POLICIES:
        raise InvalidOperationError(
            f"policy must be one of {', '.join(POLICIES)}, got {policy!r}: 'ledger' sets the balance to the "
            f"ledger sum, 'balance' posts a {ADJUSTMENT_KIND} entry")
    assert isinstance(policy, str)
    return policy


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


def is_retryable(exc: BaseException) -> bool:
    """Serialization failures (40001) and deadlocks (40P01) may pass on a retry; nothing else is retried."""
    return isinstance(exc, DBAPIError) and isinstance(
        exc.orig, psycopg.errors.SerializationFailure | psycopg.errors.DeadlockDetected)


def _is_unique_violation(exc: BaseException) -> bool:
    return isinstance(exc, DBAPIError) and isinstance(exc.orig, psycopg.errors.UniqueViolation)


def _is_lock_not_available(exc: BaseException) -> bool:
    return isinstance(exc, DBAPIError) and isinstance(exc.orig, psycopg.errors.LockNotAvailable)


def _is_numeric_overflow(exc: BaseException) -> bool:
    return isinstance(exc, DBAPIError) and isinstance(exc.orig, psycopg.errors.NumericValueOutOfRange)


# --------------------------------------------------------------------------------------------------
# SQL (bound parameters only)

#: The chain link a change must follow: the customer's latest entry (one backward step on the
#: (customer_id, id) index) and the latest reconciliation anchor. Shared by both change statements.
_CHAIN_LINK_CTES = """previous AS (
    SELECT id, balance_after FROM customer_ledger_entries
    WHERE customer_id = CAST(:customer_id AS bigint)
    ORDER BY id DESC LIMIT 1
),
anchor AS (
    SELECT chain_entry_id, balance_after FROM reconciler.balance_reconciliations
    WHERE customer_id = CAST(:customer_id AS bigint)
    ORDER BY id DESC LIMIT 1
),"""

# The fast path: ONE autocommit statement (one round trip, its own transaction). The UPDATE takes the row
# lock and, after any lock wait, re-checks its WHERE against the newest committed row; it changes the
# balance only when the funds guard holds, the key is unused, and the balance still equals what the
# chain (previous entry or anchor, as this statement's snapshot saw them) expects. Otherwise it writes
# nothing and the caller takes the locked path, which finds out exactly why.
_FAST_CHANGE = text(f"""
WITH key_hit AS (
    SELECT id, customer_id, amount, kind, balance_after
    FROM customer_ledger_entries
    WHERE idempotency_key = CAST(:idempotency_key AS text)
),
{_CHAIN_LINK_CTES}
expected AS (
    SELECT CASE
        WHEN anchor.balance_after IS NOT NULL AND anchor.chain_entry_id IS NOT DISTINCT FROM previous.id
            THEN anchor.balance_after
        WHEN previous.id IS NULL THEN 0
        ELSE previous.balance_after  -- NULL for an entry older than balance_after: nothing to check
    END AS balance
    FROM (SELECT 1) AS one LEFT JOIN previous ON true LEFT JOIN anchor ON true
),
changed AS (
    UPDATE customers
    SET balance = balance + CAST(:amount AS numeric), updated_at = now()
    WHERE id = CAST(:customer_id AS bigint)
      AND (CAST(:allow_negative AS boolean) OR balance + CAST(:amount AS numeric) >= 0)
      AND NOT EXISTS (SELECT FROM key_hit)
      AND balance = coalesce((SELECT balance FROM expected), balance)
      AND {CORE_WRITE_MARK}
    RETURNING balance
),
posted AS (
    INSERT INTO customer_ledger_entries (customer_id, amount, kind, reference, idempotency_key, balance_after)
    SELECT CAST(:customer_id AS bigint), CAST(:amount AS numeric), CAST(:kind AS text),
           CAST(:reference AS text), CAST(:idempotency_key AS text), changed.balance
    FROM changed
    WHERE {CORE_WRITE_MARK}
    RETURNING id
)
SELECT posted.id AS entry_id, changed.balance AS balance_after,
       key_hit.id AS key_entry_id, key_hit.customer_id AS key_customer_id, key_hit.amount AS key_amount,
       key_hit.kind AS key_kind, key_hit.balance_after AS key_balance_after
FROM (SELECT 1) AS one
LEFT JOIN changed ON true
LEFT JOIN posted ON true
LEFT JOIN key_hit ON true
""")

# The locked path, statement 1: take the row lock (and see whether the key is already used).
_LOCK_FOR_CHANGE = text("""
SELECT c.balance, k.id AS key_entry_id
FROM customers AS c
LEFT JOIN customer_ledger_entries AS k ON k.idempotency_key = CAST(:idempotency_key AS text)
WHERE c.id = CAST(:customer_id AS bigint)
FOR NO KEY UPDATE OF c
""")

# The locked path, statement 2: started after the lock was granted, so its snapshot sees every change
# committed before; it writes the exact new balance and returns the chain link the entry follows.
_LOCKED_CHANGE = text(f"""
WITH {_CHAIN_LINK_CTES}
changed AS (
    UPDATE customers SET balance = CAST(:balance_after AS numeric), updated_at = now()
    WHERE id = CAST(:customer_id AS bigint) AND {CORE_WRITE_MARK}
    RETURNING id
),
posted AS (
    INSERT INTO customer_ledger_entries (customer_id, amount, kind, reference, idempotency_key, balance_after)
    SELECT CAST(:customer_id AS bigint), CAST(:amount AS numeric), CAST(:kind AS text), CAST(:reference AS text),
           CAST(:idempotency_key AS text), CAST(:balance_after AS numeric)
    WHERE {CORE_WRITE_MARK}
    RETURNING id
)
SELECT posted.id AS entry_id,
       previous.id AS previous_entry_id, previous.balance_after AS previous_balance_after,
       anchor.chain_entry_id AS anchor_entry_id, anchor.balance_after AS anchor_balance
FROM posted
LEFT JOIN previous ON true
LEFT JOIN anchor ON true
""")

_READ_BALANCE = text("SELECT balance FROM customers WHERE id = CAST(:customer_id AS bigint)")

_KEYED_ENTRIES = text("""
SELECT id, customer_id, amount, kind, balance_after, idempotency_key
FROM customer_ledger_entries
WHERE idempotency_key IN (CAST(:key_a AS text), CAST(:key_b AS text))
ORDER BY id
""")

_LOCK_PAIR = text("""
SELECT c.id, c.balance,
       (SELECT count(*) FROM customer_ledger_entries
        WHERE idempotency_key IN (CAST(:key_out AS text), CAST(:key_in AS text))) AS key_hits
FROM customers AS c
WHERE c.id IN (CAST(:from_id AS bigint), CAST(:to_id AS bigint))
ORDER BY c.id
FOR NO KEY UPDATE OF c
""")

_APPLY_TRANSFER = text(f"""
WITH key_hit AS (
    SELECT id FROM customer_ledger_entries
    WHERE idempotency_key IN (CAST(:key_out AS text), CAST(:key_in AS text))
),
sides (customer_id, amount, kind, idempotency_key, balance_after, outgoing) AS (
    VALUES (CAST(:from_id AS bigint), CAST(:out_amount AS numeric), CAST(:kind_out AS text),
            CAST(:key_out AS text), CAST(:from_after AS numeric), true),
           (CAST(:to_id AS bigint), CAST(:in_amount AS numeric), CAST(:kind_in AS text),
            CAST(:key_in AS text), CAST(:to_after AS numeric), false)
),
moved AS (
    UPDATE customers AS c
    SET balance = sides.balance_after, updated_at = now()
    FROM sides
    WHERE c.id = sides.customer_id AND NOT EXISTS (SELECT FROM key_hit) AND {CORE_WRITE_MARK}
    RETURNING c.id
),
posted AS (
    INSERT INTO customer_ledger_entries (customer_id, amount, kind, reference, idempotency_key, balance_after)
    SELECT customer_id, amount, kind, CAST(:reference AS text), idempotency_key, balance_after
    FROM sides
    WHERE NOT EXISTS (SELECT FROM key_hit) AND {CORE_WRITE_MARK}
    ORDER BY outgoing DESC
    RETURNING id, customer_id
)
SELECT sides.customer_id, posted.id AS entry_id,
       previous.id AS previous_entry_id, previous.balance_after AS previous_balance_after,
       anchor.chain_entry_id AS anchor_entry_id, anchor.balance_after AS anchor_balance,
       (SELECT count(*) FROM key_hit) AS key_hits
FROM sides
LEFT JOIN posted ON posted.customer_id = sides.customer_id
LEFT JOIN LATERAL (
    SELECT e.id, e.balance_after FROM customer_ledger_entries AS e
    WHERE e.customer_id = sides.customer_id
    ORDER BY e.id DESC LIMIT 1
) AS previous ON true
LEFT JOIN LATERAL (
    SELECT r.chain_entry_id, r.balance_after FROM reconciler.balance_reconciliations AS r
    WHERE r.customer_id = sides.customer_id
    ORDER BY r.id DESC LIMIT 1
) AS anchor ON true
""")

_OPEN_REALTIME_TASK = text("""
INSERT INTO reconciler.tasks (customer_id, stored_balance, ledger_sum, drift, status, source, cause, evidence)
VALUES (CAST(:customer_id AS bigint), CAST(:stored_balance AS numeric), CAST(:ledger_sum AS numeric),
        CAST(:drift AS numeric), 'open', 'realtime', CAST(:cause AS text), CAST(:evidence AS jsonb))
ON CONFLICT (customer_id) WHERE status IN ('open', 'needs_review') DO NOTHING
RETURNING id
""")

_LOCK_FOR_RECONCILIATION_SQL = """
SELECT c.balance, r.id AS key_id, r.customer_id AS key_customer_id, r.policy AS key_policy,
       r.stored_before, r.ledger_sum, r.drift_before, r.balance_after, r.entry_id, r.changed
FROM customers AS c
LEFT JOIN reconciler.balance_reconciliations AS r ON r.idempotency_key = CAST(:idempotency_key AS text)
WHERE c.id = CAST(:customer_id AS bigint)
FOR NO KEY UPDATE OF c"""
_LOCK_FOR_RECONCILIATION = text(_LOCK_FOR_RECONCILIATION_SQL)
#: A run's corrections never wait: a customer locked by another session is skipped as busy at once.
_LOCK_FOR_RECONCILIATION_NOWAIT = text(_LOCK_FOR_RECONCILIATION_SQL + " NOWAIT")

_LEDGER_TOTALS = text("""
SELECT coalesce(sum(amount), 0) AS ledger_sum, max(id) AS last_entry_id
FROM customer_ledger_entries
WHERE customer_id = CAST(:customer_id AS bigint)
""")

_SETTLE = text(f"""
WITH settled AS (
    UPDATE customers SET balance = CAST(:balance_after AS numeric), updated_at = now()
    WHERE id = CAST(:customer_id AS bigint) AND CAST(:set_balance AS boolean) AND {CORE_WRITE_MARK}
    RETURNING id
),
adjustment AS (
    INSERT INTO customer_ledger_entries (customer_id, amount, kind, reference, balance_after)
    SELECT CAST(:customer_id AS bigint), CAST(:adjustment AS numeric), CAST(:kind AS text),
           CAST(:reference AS text), CAST(:balance_after AS numeric)
    WHERE CAST(:adjustment AS numeric) IS NOT NULL AND {CORE_WRITE_MARK}
    RETURNING id
),
logged AS (
    INSERT INTO reconciler.balance_reconciliations
        (customer_id, policy, idempotency_key, reference, stored_before, ledger_sum, drift_before,
         balance_after, entry_id, chain_entry_id, changed, audit)
    SELECT CAST(:customer_id AS bigint), CAST(:policy AS text), CAST(:idempotency_key AS text),
           CAST(:reference AS text), CAST(:stored_before AS numeric), CAST(:ledger_sum AS numeric),
           CAST(:drift AS numeric), CAST(:balance_after AS numeric), adjustment_id,
           coalesce(adjustment_id, CAST(:last_entry_id AS bigint)), CAST(:changed AS boolean),
           CAST(:audit AS jsonb)
    FROM (SELECT (SELECT id FROM adjustment) AS adjustment_id) AS made
    RETURNING id, entry_id
)
SELECT logged.id AS reconciliation_id, logged.entry_id FROM logged
""")

_LOAD_RECONCILIATION = text("""
SELECT id AS key_id, customer_id AS key_customer_id, policy AS key_policy, stored_before, ledger_sum,
       drift_before, balance_after, entry_id, changed
FROM reconciler.balance_reconciliations
WHERE idempotency_key = CAST(:idempotency_key AS text)
""")

_VALIDATE = text("""
SELECT c.balance, totals.ledger_sum, totals.entry_count
FROM customers AS c
CROSS JOIN LATERAL (
    SELECT coalesce(sum(e.amount), 0) AS ledger_sum, count(*) AS entry_count
    FROM customer_ledger_entries AS e WHERE e.customer_id = c.id
) AS totals
WHERE c.id = CAST(:customer_id AS bigint)
""")


class _FastRow(NamedTuple):
    """The single row of ``_FAST_CHANGE``, in its column order."""

    entry_id: int | None
    balance_after: Decimal
    key_entry_id: int | None
    key_customer_id: int
    key_amount: Decimal
    key_kind: str
    key_balance_after: Decimal | None


def _link(row: Row[Any]) -> ChainLink:
    return ChainLink(row.previous_entry_id, row.previous_balance_after, row.anchor_entry_id, row.anchor_balance)


# --------------------------------------------------------------------------------------------------
# The TTL read cache


class _BalanceCache:
    """Thread-safe TTL cache of balances. A read that raced with an invalidation is not stored (the
    generation counter moved), so an invalidation is never undone by a slow reader."""

    def __init__(self, ttl: float, clock: Callable[[], float], max_entries: int) -> None:
        self._ttl = ttl
        self._clock = clock
        self._max_entries = max_entries
        self._lock = threading.Lock()
        self._entries: dict[int, tuple[Decimal, float]] = {}
        self._generation = 0

    def get(self, customer_id: int) -> tuple[Decimal | None, int]:
        """The cached balance (or None) and the generation to pass to :meth:`put`."""
        with self._lock:
            hit = self._entries.get(customer_id)
            if hit is not None and self._clock() < hit[1]:
                return hit[0], self._generation
            if hit is not None:
                del self._entries[customer_id]
            return None, self._generation

    def put(self, customer_id: int, balance: Decimal, generation: int) -> None:
        with self._lock:
            if generation != self._generation:
                return
            now = self._clock()
            if len(self._entries) >= self._max_entries:
                self._entries = {k: v for k, v in self._entries.items() if v[1] > now}
                if len(self._entries) >= self._max_entries:
                    self._entries.clear()
            self._entries[customer_id] = (balance, now + self._ttl)

    def invalidate(self, *customer_ids: int) -> None:
        with self._lock:
            self._generation += 1
            for customer_id in customer_ids:
                self._entries.pop(customer_id, None)


# --------------------------------------------------------------------------------------------------
# The manager


@dataclass(frozen=True)
class _KeyedEntry:
    id: int
    customer_id: int
    amount: Decimal
    kind: str
    balance_after: Decimal | None


class _KeyTaken(Exception):
    """Internal: the idempotency key already belongs to an entry; carries the keyed entries."""


class BalanceManager:
    """The one approved way to read and write balances (the company's ``CustomerBalanceManager``).

    ``cache_ttl`` (seconds) turns on a read cache for :meth:`get_balance`. Every write through THIS
    manager invalidates the customer's cached balance as soon as it commits. Writers elsewhere (another
    process, another manager, SQL around the core) are not seen until the entry expires: a cached balance
    is at most ``cache_ttl`` seconds stale. Leave it ``None`` where a read must be exact (e.g. before a
    decision that is not re-checked under the row lock; the write methods never use the cache).

    ``allow_negative`` is the default for debits and transfers; each call may override it.
    ``max_retries`` bounds the retries of one operation on serialization failures and deadlocks.
    ``clock`` is the cache's monotonic clock (injectable for tests).

    The engine must use psycopg 3 (``reconciler.db.make_engine`` does). A payment costs one round trip
    plus the pool's pre-ping when the engine has one: high-rate callers may pass an engine built with
    ``pool_pre_ping=False`` (see bench/README.md for what that buys).
    """

    def __init__(self, engine: Engine, cache_ttl: float | None = None, *, allow_negative: bool = False,
                 max_retries: int = DEFAULT_MAX_RETRIES, clock: Callable[[], float] = time.monotonic,
                 cache_max_entries: int = DEFAULT_CACHE_MAX_ENTRIES) -> None:
        if cache_ttl is not None and (isinstance(cache_ttl, bool) or not cache_ttl > 0):
            raise InvalidOperationError(f"cache_ttl must be None (no cache) or seconds > 0, got {cache_ttl!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise InvalidOperationError(f"max_retries must be an int >= 0, got {max_retries!r}")
        self.engine = engine
        self.cache_ttl = cache_ttl
        self.allow_negative = bool(allow_negative)
        self.max_retries = max_retries
        self._cache = _BalanceCache(cache_ttl, clock, cache_max_entries) if cache_ttl is not None else None
        if engine.dialect.driver != "psycopg":
            raise InvalidOperationError(
                f"the balance core needs the psycopg 3 driver (postgresql+psycopg://), got {engine.dialect.driver}; "
                f"build the engine with reconciler.db.make_engine")
        self._compiled: dict[TextClause, str] = {}
        self._pinned: Connection | None = None
        self._stats = {"retries": 0, "locked_path": 0}
        self._stats_lock = threading.Lock()

    # -- reads ------------------------------------------------------------------------------------

    @property
    def retries(self) -> int:
        """How many attempts this manager has retried after a serialization failure or deadlock."""
        return self.stats()["retries"]

    def stats(self) -> dict[str, int]:
        """Counters since construction: ``retries`` (40001/40P01 retried) and ``locked_path`` (changes
        that took the locked path: refused or unusual input, contention, or a chain mismatch)."""
        with self._stats_lock:
            return dict(self._stats)

    @contextmanager
    def pinned(self) -> Iterator[BalanceManager]:
        """This manager with ONE connection checked out for the whole block: every operation inside runs on
        it, with no pool checkout or pre-ping per call (in bench/README.md that is most of the distance to
        the raw baseline). Meant for a worker loop: use the yielded manager from one thread only. The cache
        and counters stay shared with this manager; the connection returns to the pool when the block
        ends, and the yielded manager then goes back to the pool per call."""
        if self._pinned is not None:
            yield self
            return
        with self.engine.connect() as conn:
            view = copy.copy(self)
            view._pinned = conn
            try:
                yield view
            finally:
                view._pinned = None

    def get_balance(self, customer_id: int) -> Decimal:
        """The stored balance (from the TTL cache when on: at most ``cache_ttl`` seconds stale for writes
        made outside this manager)."""
        customer_id = check_customer_id(customer_id)
        generation = 0
        if self._cache is not None:
            cached, generation = self._cache.get(customer_id)
            if cached is not None:
                return cached
        with self._reading() as conn:
            balance = conn.execute(_READ_BALANCE, {"customer_id": customer_id}).scalar_one_or_none()
        if balance is None:
            raise _not_found(customer_id)
        if self._cache is not None:
            self._cache.put(customer_id, balance, generation)
        return Decimal(balance)

    def validate_balance(self, customer_id: int, *, tolerance: Decimal = DEFAULT_TOLERANCE) -> BalanceCheck:
        """Compare the stored balance with the ledger sum (one statement, one snapshot; no lock, no write)."""
        customer_id = check_customer_id(customer_id)
        tolerance = to_tolerance(tolerance)
        with self._reading() as conn:
            row = conn.execute(_VALIDATE, {"customer_id": customer_id}).one_or_none()
        if row is None:
            raise _not_found(customer_id)
        drift = row.balance - row.ledger_sum
        return BalanceCheck(customer_id, row.balance, row.ledger_sum, drift, not is_drift(drift, tolerance),
                            int(row.entry_count), tolerance)

    # -- writes -----------------------------------------------------------------------------------

    def update_balance(self, customer_id: int, amount: Decimal | int | str, operation: str = "add", *, kind: str,
                       reference: str | None = None, idempotency_key: str | None = None,
                       allow_negative: bool | None = None) -> BalanceChange:
        """Add or subtract ``amount`` (> 0, exact cents) and append the entry, in one transaction.

        Raises a named error and writes nothing on bad input, an unknown customer, or a debit below zero
        when negative balances are not allowed. With ``idempotency_key`` a repeated call returns the
        first result (``replayed=True``)."""
        customer_id = check_customer_id(customer_id)
        signed = signed_amount(amount, operation)
        kind = check_kind(kind)
        reference = check_reference(reference)
        key = check_key(idempotency_key)
        allowed = self.allow_negative if allow_negative is None else bool(allow_negative)
        params = {"customer_id": customer_id, "amount": signed, "kind": kind, "reference": reference,
                  "idempotency_key": key, "allow_negative": allowed or signed > 0}

        def attempt() -> BalanceChange:
            try:
                row = _FastRow._make(self._execute_autocommit(_FAST_CHANGE, params))
            except DBAPIError as exc:
                if key is not None and _is_unique_violation(exc):
                    keyed = self._load_keyed(key, None)
                    if keyed:
                        return _replayed_change(key, customer_id, signed, kind, keyed)
                if not _is_numeric_overflow(exc):
                    raise
            else:
                if row.entry_id is not None:
                    return BalanceChange(customer_id, signed, row.balance_after - signed, row.balance_after,
                                         int(row.entry_id), key, False, kind)
                if row.key_entry_id is not None:
                    first = _KeyedEntry(row.key_entry_id, row.key_customer_id, row.key_amount, row.key_kind,
                                        row.key_balance_after)
                    return _replayed_change(key, customer_id, signed, kind, [first])
            # Nothing was written: refused funds, unknown customer, an overflow, or a chain the snapshot could
            # not confirm. Take the row lock and decide with exact values.
            self._count("locked_path")
            try:
                with self._transaction() as conn:
                    return self._locked_change(conn, params, allowed)
            except _KeyTaken as taken:
                return _replayed_change(key, customer_id, signed, kind, taken.args[0])
            except DBAPIError as exc:
                if key is not None and _is_unique_violation(exc):
                    keyed = self._load_keyed(key, None)
                    if keyed:
                        return _replayed_change(key, customer_id, signed, kind, keyed)
                raise

        try:
            return self._retrying(attempt)
        finally:  # also when the outcome is unknown (e.g. the connection broke around a commit)
            self._invalidate(customer_id)

    def transfer(self, from_id: int, to_id: int, amount: Decimal | int | str, *, kind: str = "transfer",
                 reference: str | None = None, idempotency_key: str | None = None,
                 allow_negative: bool | None = None) -> Transfer:
        """Move ``amount`` from one customer to another in one transaction: both rows locked in id order,
        two entries (``<kind>_out`` and ``<kind>_in``, keys ``<key>:out`` and ``<key>:in``)."""
        from_id = check_customer_id(from_id, name="from_id")
        to_id = check_customer_id(to_id, name="to_id")
        if from_id == to_id:
            raise InvalidOperationError(f"a transfer needs two different customers, got {from_id} twice")
        money = to_positive_money(amount)
        kind = check_kind(kind)
        reference = check_reference(reference)
        key = check_key(idempotency_key)
        if key is not None and len(key) > MAX_KEY_LENGTH - 4:
            raise InvalidOperationError(f"a transfer's idempotency_key is at most {MAX_KEY_LENGTH - 4} characters")
        allowed = self.allow_negative if allow_negative is None else bool(allow_negative)
        key_out, key_in = transfer_entry_keys(key)
        kind_out, kind_in = f"{kind}_out", f"{kind}_in"

        def replay(keyed: list[_KeyedEntry]) -> Transfer:
            return _replayed_transfer(key, from_id, to_id, money, (kind_out, kind_in), (key_out, key_in), keyed)

        def attempt() -> Transfer:
            try:
                with self._transaction() as conn:
                    return self._apply_transfer(conn, from_id, to_id, money, allowed, kind_out, kind_in,
                                                key_out, key_in, reference, key)
            except _KeyTaken as taken:
                return replay(taken.args[0])
            except DBAPIError as exc:
                if key is not None and _is_unique_violation(exc):
                    keyed = self._load_keyed(key_out, key_in)
                    if keyed:
                        return replay(keyed)
                raise

        try:
            return self._retrying(attempt)
        finally:  # also when the outcome is unknown (e.g. the connection broke around a commit)
            self._invalidate(from_id, to_id)

    def reconcile_balance(self, customer_id: int, policy: str = "ledger", *, tolerance: Decimal = Decimal("0.00"),
                          idempotency_key: str | None = None, reference: str | None = None,
                          audit: Mapping[str, object] | None = None, nowait: bool = False) -> Reconciliation:
        """Settle the balance against the ledger under the row lock, re-reading everything in one transaction.

        With ``nowait`` a customer whose row another session holds locked is not waited for: the call raises
        :class:`CustomerBusyError` at once, naming the sessions holding the lock, and writes nothing.

        Policy ``ledger`` sets the balance to the ledger sum (no entry); ``balance`` posts a
        ``reconciliation_adjustment`` entry of amount = drift so the ledger sum becomes the balance. A drift
        within ``tolerance`` under the lock changes nothing (``changed=False``). Every call is logged with
        old and new values and ``audit`` in ``reconciler.balance_reconciliations``; with an
        ``idempotency_key`` a replay returns the first result and writes nothing."""
        customer_id = check_customer_id(customer_id)
        policy = check_policy(policy)
        tolerance = to_tolerance(tolerance)
        key = check_key(idempotency_key)
        reference = check_reference(reference)
        audit_json = _json(dict(audit or {}))

        def attempt() -> Reconciliation:
            try:
                with self._transaction() as conn:
                    return self._settle(conn, customer_id, policy, tolerance, key, reference, audit_json, nowait)
            except DBAPIError as exc:
                if nowait and _is_lock_not_available(exc):
                    raise self._busy(customer_id) from exc
                if key is not None and _is_unique_violation(exc):
                    with self._reading() as conn:
                        row = conn.execute(_LOAD_RECONCILIATION, {"idempotency_key": key}).one_or_none()
                    if row is not None:
                        return _replayed_reconciliation(key, customer_id, policy, row)
                raise

        try:
            return self._retrying(attempt)
        finally:  # also when the outcome is unknown (e.g. the connection broke around a commit)
            self._invalidate(customer_id)

    # -- transaction bodies -------------------------------------------------------------------------

    def _locked_change(self, conn: Connection, params: dict[str, Any], allowed: bool) -> BalanceChange:
        customer_id: int = params["customer_id"]
        signed: Decimal = params["amount"]
        locked = conn.execute(_LOCK_FOR_CHANGE, params).one_or_none()
        if locked is None:
            raise _not_found(customer_id)
        if locked.key_entry_id is not None:
            raise _KeyTaken(self._keyed_in(conn, params["idempotency_key"], None))
        before: Decimal = locked.balance
        missing = shortfall(before, signed, allowed)
        if missing is not None:
            raise _insufficient(customer_id, before, signed, missing)
        after = check_result_balance(customer_id, before, signed)
        row = conn.execute(_LOCKED_CHANGE, {**params, "balance_after": after}).one()
        link = _link(row)
        drift = chain_drift(before, link)
        if drift is not None:
            _open_realtime_task(conn, customer_id, before, drift, link, row.entry_id)
        return BalanceChange(customer_id, signed, before, after, int(row.entry_id), params["idempotency_key"],
                             False, params["kind"], drift)

    def _apply_transfer(self, conn: Connection, from_id: int, to_id: int, money: Decimal, allowed: bool,
                        kind_out: str, kind_in: str, key_out: str | None, key_in: str | None,
                        reference: str | None, key: str | None) -> Transfer:
        rows = conn.execute(_LOCK_PAIR, {"from_id": from_id, "to_id": to_id, "key_out": key_out,
                                         "key_in": key_in}).all()
        if any(row.key_hits for row in rows):
            raise _KeyTaken(self._keyed_in(conn, key_out, key_in))
        balances = {row.id: row.balance for row in rows}
        for customer_id in (from_id, to_id):
            if customer_id not in balances:
                raise _not_found(customer_id)
        missing = shortfall(balances[from_id], -money, allowed)
        if missing is not None:
            raise _insufficient(from_id, balances[from_id], -money, missing)
        from_after = check_result_balance(from_id, balances[from_id], -money)
        to_after = check_result_balance(to_id, balances[to_id], money)
        sides = conn.execute(_APPLY_TRANSFER, {
            "from_id": from_id, "to_id": to_id, "out_amount": -money, "in_amount": money,
            "kind_out": kind_out, "kind_in": kind_in, "key_out": key_out, "key_in": key_in,
            "from_after": from_after, "to_after": to_after, "reference": reference,
        }).all()
        if any(row.key_hits for row in sides):
            raise _KeyTaken(self._keyed_in(conn, key_out, key_in))
        changes: dict[int, BalanceChange] = {}
        for row in sides:
            outgoing = row.customer_id == from_id
            signed = -money if outgoing else money
            after = from_after if outgoing else to_after
            before = after - signed
            # This statement started after both locks were taken, so its snapshot is current.
            link = _link(row)
            drift = chain_drift(before, link)
            if drift is not None:
                _open_realtime_task(conn, row.customer_id, before, drift, link, row.entry_id)
            changes[row.customer_id] = BalanceChange(
                row.customer_id, signed, before, after, int(row.entry_id), key_out if outgoing else key_in,
                False, kind_out if outgoing else kind_in, drift)
        return Transfer(from_id, to_id, money, changes[from_id], changes[to_id], key, False)

    def _settle(self, conn: Connection, customer_id: int, policy: str, tolerance: Decimal, key: str | None,
                reference: str | None, audit_json: str, nowait: bool = False) -> Reconciliation:
        lock = _LOCK_FOR_RECONCILIATION_NOWAIT if nowait else _LOCK_FOR_RECONCILIATION
        locked = conn.execute(lock, {"customer_id": customer_id, "idempotency_key": key}).one_or_none()
        if locked is None:
            raise _not_found(customer_id)
        if locked.key_id is not None:
            return _replayed_reconciliation(key, customer_id, policy, locked)
        # A fresh statement: its snapshot sees every entry committed before the lock was granted.
        totals = conn.execute(_LEDGER_TOTALS, {"customer_id": customer_id}).one()
        stored: Decimal = locked.balance
        ledger_sum = Decimal(totals.ledger_sum)
        plan = plan_reconciliation(stored, ledger_sum, policy, tolerance)
        settled = conn.execute(_SETTLE, {
            "customer_id": customer_id, "policy": policy, "idempotency_key": key, "reference": reference,
            "stored_before": stored, "ledger_sum": ledger_sum, "drift": plan.drift,
            "balance_after": plan.balance_after, "set_balance": plan.changed and policy == "ledger",
            "adjustment": plan.adjustment, "kind": ADJUSTMENT_KIND, "last_entry_id": totals.last_entry_id,
            "changed": plan.changed, "audit": audit_json,
        }).one()
        if plan.changed:
            log.info("reconciled customer %s (policy %s): balance %s -> %s, drift was %s",
                     customer_id, policy, stored, plan.balance_after, plan.drift)
        return Reconciliation(customer_id, policy, stored, ledger_sum, plan.drift, plan.balance_after,
                              settled.entry_id, plan.changed, False, int(settled.reconciliation_id))

    # -- helpers ------------------------------------------------------------------------------------

    def _execute_autocommit(self, statement: TextClause, params: Mapping[str, Any]) -> tuple[Any, ...]:
        """Run one statement as its own transaction and return its single row.

        This is the hot path, measured: SQLAlchemy's execution layer plus BEGIN and COMMIT cost about as
        much client CPU as the database work itself, so the statement (a Core ``text()`` construct, bound
        parameters only, compiled once for this engine's dialect) runs on the psycopg connection itself in
        autocommit mode: one round trip, with a cursor kept per connection. The connection is the pinned
        one (see :meth:`pinned`) or one checked out of the engine's pool for this call. Driver errors are
        wrapped in SQLAlchemy's DBAPIError like any other statement's, and a broken connection is
        invalidated rather than reused."""
        sql = self._compiled.get(statement)
        if sql is None:
            sql = self._compiled[statement] = str(statement.compile(dialect=self.engine.dialect))
        pinned = self._pinned
        proxied = pinned.connection if pinned is not None else self.engine.raw_connection()
        conn = proxied.driver_connection
        assert isinstance(conn, psycopg.Connection)
        try:
            conn.autocommit = True
            try:
                cursor = proxied.info.get(_CURSOR_INFO_KEY)
                if cursor is None or cursor.closed or cursor.connection is not conn:
                    cursor = proxied.info[_CURSOR_INFO_KEY] = conn.cursor()
                row = cursor.execute(sql, params).fetchone()
                assert row is not None  # the statement always returns exactly one row
                return row
            finally:
                if not conn.broken:
                    conn.autocommit = False  # SQLAlchemy and the pool expect transactional connections
        except psycopg.Error as exc:
            raise DBAPIError.instance(sql, params, exc, psycopg.Error, dialect=self.engine.dialect,
                                      connection_invalidated=conn.broken) from exc
        finally:
            if pinned is not None:
                if conn.broken:
                    pinned.invalidate()  # the pinned Connection reconnects on its next use
            elif conn.broken:
                proxied.invalidate()
            else:
                proxied.close()

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """One transaction: on the pinned connection, or on one from the pool (``engine.begin()``)."""
        if self._pinned is None:
            with self.engine.begin() as conn:
                yield conn
        else:
            with self._pinned.begin():
                yield self._pinned

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        """A connection for reads; on the pinned one inside a short transaction, so none stays open."""
        if self._pinned is None:
            with self.engine.connect() as conn:
                yield conn
        else:
            with self._pinned.begin():
                yield self._pinned

    def _busy(self, customer_id: int) -> CustomerBusyError:
        """The error for a customer locked by another session, naming the sessions holding the lock."""
        try:
            with self._reading() as conn:
                lockers = row_lockers(conn, customer_id)
        except DBAPIError:  # diagnostics only: never turn "busy" into a failure
            log.warning("could not look up who holds customer %s's row lock", customer_id, exc_info=True)
            lockers = []
        return CustomerBusyError(
            f"customer {customer_id} is locked by another session ({describe_lockers(lockers)}); nothing was "
            f"written: the correction is skipped now and retried by the next run", customer_id, tuple(lockers))

    def _count(self, name: str) -> None:
        with self._stats_lock:
            self._stats[name] += 1

    def _retrying(self, attempt: Callable[[], T]) -> T:
        last: DBAPIError | None = None
        for number in range(self.max_retries + 1):
            try:
                return attempt()
            except psycopg.OperationalError as exc:  # the pool connecting anew raises raw driver errors
                if not is_connection_failure(exc):
                    raise
                raise _unavailable(self.engine, exc) from exc
            except DBAPIError as exc:
                if exc.connection_invalidated or is_connection_failure(exc.orig):
                    raise _unavailable(self.engine, exc.orig or exc) from exc
                if not is_retryable(exc):
                    raise
                last = exc
                self._count("retries")
                log.info("retrying after %s (attempt %d of %d)", type(exc.orig).__name__, number + 1,
                         self.max_retries + 1)
                if number < self.max_retries:
                    time.sleep(random.uniform(0, min(RETRY_BACKOFF_CAP, RETRY_BACKOFF_BASE * 2**number)))
        assert last is not None
        reason = str(last.orig).strip().splitlines()[0] if last.orig else type(last).__name__
        raise TransientDatabaseError(
            f"gave up after {self.max_retries + 1} attempts, each ended by {type(last.orig).__name__} ({reason}); "
            f"nothing was written: retry later (with the same idempotency key), or reduce contention on these "
            f"customers") from last

    def _keyed_in(self, conn: Connection, key_a: str | None, key_b: str | None) -> list[_KeyedEntry]:
        rows = conn.execute(_KEYED_ENTRIES, {"key_a": key_a, "key_b": key_b}).all()
        return [_KeyedEntry(r.id, r.customer_id, r.amount, r.kind, r.balance_after) for r in rows]

    def _load_keyed(self, key_a: str | None, key_b: str | None) -> list[_KeyedEntry]:
        with self._reading() as conn:
            return self._keyed_in(conn, key_a, key_b)

    def _invalidate(self, *customer_ids: int) -> None:
        if self._cache is not None:
            self._cache.invalidate(*customer_ids)


# --------------------------------------------------------------------------------------------------
# Results and errors built from rows


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
                     keyed: list[_KeyedEntry]) -> BalanceChange:
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
                       keys: tuple[str | None, str | None], keyed: list[_KeyedEntry]) -> Transfer:
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


def _open_realtime_task(conn: Connection, customer_id: int, before: Decimal, drift: Decimal, link: ChainLink,
                        entry_id: int) -> None:
    expected = before - drift
    evidence = {
        "check": "realtime",
        "detected_by_entry_id": entry_id,
        "previous_entry_id": link.previous_entry_id,
        "previous_balance_after": link.previous_balance_after,
        "anchored": link.anchor_balance is not None and link.anchor_entry_id == link.previous_entry_id,
        "balance_before": before,
        "expected_balance_before": expected,
        "ledger_sum_is": "the chain's balance before the change (previous balance_after or anchor), not a SUM",
    }
    if abs(drift) > MAX_AMOUNT or abs(expected) > MAX_AMOUNT:  # cannot be stored; never block the payment
        log.error("realtime drift on customer %s too large to record as a task: %s", customer_id, drift)
        return
    opened = conn.execute(_OPEN_REALTIME_TASK, {
        "customer_id": customer_id, "stored_balance": before, "ledger_sum": expected, "drift": drift,
        "cause": REALTIME_CAUSE, "evidence": _json(evidence),
    }).scalar_one_or_none()
    log.warning("customer %s: balance before entry %s is %s but the chain says %s (drift %s); %s",
                customer_id, entry_id, before, expected, drift,
                f"opened realtime task {opened}" if opened is not None else "an unresolved task already exists")


#: SQLSTATEs of a lost server: connection exceptions (class 08) and shutdowns (57P01-57P03).
CONNECTION_FAILURE_STATES = ("57P01", "57P02", "57P03")


def is_connection_failure(exc: BaseException | None) -> bool:
    """True when ``exc`` says the server is gone (no SQLSTATE at all, class 08, or a shutdown), not when a
    statement failed on a live connection (serialization failures, lock timeouts and the like)."""
    if not isinstance(exc, psycopg.OperationalError):
        return False
    state = exc.sqlstate
    return state is None or state.startswith("08") or state in CONNECTION_FAILURE_STATES


def _unavailable(engine: Engine, exc: BaseException) -> DatabaseUnavailableError:
    """The database went away during a change: its outcome is unknown when the statement had been sent, so the
    message says how to make the retry exactly-once."""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return DatabaseUnavailableError(
        f"lost the ledger database ({describe_url(engine.url)}): {reason}. If the change was sent it may have been "
        f"applied: retry it with the same idempotency_key once the database is back, so it applies exactly once")
