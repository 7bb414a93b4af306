"""Per-chunk totals out of the comparison statement, so a run's report ties out from the run's own snapshots
without summing the ledger a second time: how many customers each chunk compared, the sum of their cached
balances, the sum of their ledger sums, and the snapshot (``pg_current_snapshot()``) the statement read.

And ``reconciler.quality_unexpected``: an expectation's unexpected rows, computed ONCE per check and read back
by Great Expectations (whose ``UnexpectedRowsExpectation`` runs its query twice: to count, then for rows).
Unlogged and short-lived: a check deletes its own rows when it is done.

Revision ID: 0008
"""

from alembic import op
from sqlalchemy import text

revision = "0008"
down_revision = "0009"


def upgrade() -> None:
    op.get_bind().execute(text("""
        alter table reconciler.run_chunks
            add column compared_customers bigint,
            add column balance_total numeric(24,2),
            add column ledger_total numeric(24,2),
            add column snapshot text"""))
    op.get_bind().execute(text("""
        create unlogged table reconciler.quality_unexpected (
            check_key text not null,
            expectation text not null,
            ordinal bigint not null,
            row jsonb not null,
            primary key (check_key, expectation, ordinal))"""))


def downgrade() -> None:
    op.get_bind().execute(text("drop table if exists reconciler.quality_unexpected"))
    op.get_bind().execute(text("""
        alter table reconciler.run_chunks
            drop column if exists snapshot,
            drop column if exists ledger_total,
            drop column if exists balance_total,
            drop column if exists compared_customers"""))
