"""The balance core's SQL text (bound parameters only) and the shapes of the rows it returns.

Only :mod:`reconciler.balances.manager` executes these: they are the only statements in the library that
update ``customers`` or append to ``customer_ledger_entries``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, NamedTuple

from sqlalchemy import text
from sqlalchemy.engine import Row

from reconciler.balance_check import validate_sql

from .values import ChainLink

#: How the guard (``reconciler.guard``) recognises the core's writes: every UPDATE and INSERT below has
#: CORE_WRITE_MARK in its WHERE, an initplan that sets the transaction-local setting before the statement
#: writes its first row (no extra round trip); the guard's triggers skip rows written while it says "core".
WRITER_SETTING = "reconciler.writer"
CORE_WRITER = "core"
CORE_WRITE_MARK = f"(SELECT set_config('{WRITER_SETTING}', '{CORE_WRITER}', true)) = '{CORE_WRITER}'"
#: A reconciliation's statements also mark their transaction settled: under the customer's row lock it set the
#: balance and the ledger equal, so the change feed of incremental runs (``reconciler.change_feed``) need not
#: list that transaction (any other transaction touching the customer has its own feed row).
SETTLED_SETTING = "reconciler.settled"
SETTLED_MARK = f"(SELECT set_config('{SETTLED_SETTING}', 'settled', true)) = 'settled'"

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
      AND {SETTLED_MARK}
    RETURNING id
),
adjustment AS (
    INSERT INTO customer_ledger_entries (customer_id, amount, kind, reference, balance_after)
    SELECT CAST(:customer_id AS bigint), CAST(:adjustment AS numeric), CAST(:kind AS text),
           CAST(:reference AS text), CAST(:balance_after AS numeric)
    WHERE CAST(:adjustment AS numeric) IS NOT NULL AND {CORE_WRITE_MARK} AND {SETTLED_MARK}
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
),
-- A correction that changed something is one audit event, queued here and chained at commit
-- (reconciler.audit): in this statement, so it costs no extra round trip.
audited AS (
    SELECT reconciler.append_audit(jsonb_build_array(jsonb_build_object(
        'kind', 'correction', 'actor', CAST(:actor AS text),
        'data', CAST(:audit_event AS jsonb)
                || jsonb_build_object('reconciliation_id', logged.id, 'entry_id', logged.entry_id)))) AS queued
    FROM logged
    WHERE CAST(:changed AS boolean)
)
SELECT logged.id AS reconciliation_id, logged.entry_id, (SELECT count(*) FROM audited) AS audited FROM logged
""")

_LOAD_RECONCILIATION = text("""
SELECT id AS key_id, customer_id AS key_customer_id, policy AS key_policy, stored_before, ledger_sum,
       drift_before, balance_after, entry_id, changed
FROM reconciler.balance_reconciliations
WHERE idempotency_key = CAST(:idempotency_key AS text)
""")

_VALIDATE = text(validate_sql("CAST(:customer_id AS bigint)"))


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

