"""The balance core: the only writer of ``customers.balance`` and ``customer_ledger_entries``.

A package: :mod:`.values` (results and constants), :mod:`.rules` (pure checks and plans), :mod:`.statements`
(the SQL), :mod:`.cache` (the TTL read cache) and :mod:`.manager` (:class:`BalanceManager`). Import from
here: ``from reconciler.balances import BalanceManager``.

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
- A payment or an uncached read runs on a pooled connection the manager keeps in autocommit between calls
  (its liveness judged without a round trip, see :func:`reconciler.db.connection_is_alive`; returned to the
  pool when it runs short, or by ``close()``); a worker
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

The guard (``reconciler.guard``) recognises these writes as the core's: every UPDATE and INSERT in
:mod:`.statements` has ``CORE_WRITE_MARK`` in its WHERE (a transaction-local ``set_config`` evaluated before
its first row is written, no extra round trip), so the guard's triggers queue nothing for them.

Serialization failures (40001) and deadlocks (40P01) are retried up to ``max_retries`` times with a
short jittered backoff, then :class:`TransientDatabaseError`; every other database error propagates.
"""

from __future__ import annotations

from reconciler.db_errors import CONNECTION_FAILURE_STATES, is_connection_failure, is_retryable

from .cache import BalanceCache
from .manager import BalanceManager
from .rules import (
    chain_drift,
    check_customer_id,
    check_key,
    check_kind,
    check_policy,
    check_reference,
    check_result_balance,
    expected_balance_before,
    plan_reconciliation,
    shortfall,
    signed_amount,
    transfer_entry_keys,
)
from .statements import _FAST_CHANGE, CORE_WRITE_MARK, CORE_WRITER, WRITER_SETTING
from .values import (
    ADJUSTMENT_KIND,
    DEFAULT_CACHE_MAX_ENTRIES,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TOLERANCE,
    MAX_KEY_LENGTH,
    OPERATIONS,
    POLICIES,
    REALTIME_CAUSE,
    RETRY_BACKOFF_BASE,
    RETRY_BACKOFF_CAP,
    BalanceChange,
    BalanceCheck,
    ChainLink,
    Reconciliation,
    ReconciliationPlan,
    Transfer,
)

__all__ = [
    "ADJUSTMENT_KIND", "CONNECTION_FAILURE_STATES", "CORE_WRITER", "CORE_WRITE_MARK", "DEFAULT_CACHE_MAX_ENTRIES",
    "DEFAULT_MAX_RETRIES", "DEFAULT_TOLERANCE", "MAX_KEY_LENGTH", "OPERATIONS", "POLICIES", "REALTIME_CAUSE",
    "RETRY_BACKOFF_BASE", "RETRY_BACKOFF_CAP", "WRITER_SETTING", "_FAST_CHANGE", "BalanceCache", "BalanceChange",
    "BalanceCheck", "BalanceManager", "ChainLink", "Reconciliation", "ReconciliationPlan", "Transfer",
    "chain_drift", "check_customer_id", "check_key", "check_kind", "check_policy", "check_reference",
    "check_result_balance", "expected_balance_before", "is_connection_failure", "is_retryable",
    "plan_reconciliation", "shortfall", "signed_amount", "transfer_entry_keys",
]
