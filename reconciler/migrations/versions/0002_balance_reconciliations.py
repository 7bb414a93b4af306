"""The balance core's reconciliation log: audit trail, idempotency memory and chain anchor.

Every ``BalanceManager.reconcile_balance`` call appends one row (old and new values, policy, the
caller's audit details). The row doubles as

- the idempotency record of a reconciliation: policy ``ledger`` writes no ledger entry, so its key
  lives here (unique), and a replay returns the recorded result;
- the anchor of the ``balance_after`` chain: ``chain_entry_id`` is the customer's latest entry when the
  balance was settled and ``balance_after`` the balance accepted then. The core's O(1) real-time check
  trusts the anchor while no newer entry exists, so after policy ``ledger`` sets the balance to the
  ledger sum (no entry), the next payment is not flagged against a stale ``balance_after``.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import text

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    bind = op.get_bind()
    bind.execute(text("""
        create table reconciler.balance_reconciliations (
            id bigint generated always as identity primary key,
            customer_id bigint not null references customers (id),
            policy text not null constraint ck_balance_reconciliations_policy check (policy in ('ledger', 'balance')),
            idempotency_key text,
            reference text,
            stored_before numeric(18,2) not null,
            ledger_sum numeric(18,2) not null,
            drift_before numeric(18,2) not null,
            balance_after numeric(18,2) not null,
            entry_id bigint,
            chain_entry_id bigint,
            changed boolean not null,
            audit jsonb not null default '{}',
            reconciled_at timestamptz not null default now(),
            constraint ck_balance_reconciliations_drift check (drift_before = stored_before - ledger_sum),
            constraint ck_balance_reconciliations_entry check (entry_id is null or policy = 'balance')
        )"""))
    bind.execute(text("""create unique index ux_balance_reconciliations_idempotency_key
                         on reconciler.balance_reconciliations (idempotency_key)"""))
    bind.execute(text("""create index ix_balance_reconciliations_customer
                         on reconciler.balance_reconciliations (customer_id, id)"""))


def downgrade() -> None:
    op.get_bind().execute(text("drop table if exists reconciler.balance_reconciliations"))
