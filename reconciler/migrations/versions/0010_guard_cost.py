"""The guard's commit check at its statement's cost: a guard installed before this revision gets the current
functions (``reconciler/guard.py``), so a balance written around the core is judged by the chain's end in O(1)
(the ledger SUM only when the transaction wrote entries of that customer, or the chain has no balance_after),
and the bypass task's audit event is taken from the upsert's RETURNING instead of a second read of the task;
and its feed triggers anew: the balance-update feed trigger skips the core's statements (their entries feed them).
The feed's triggers get new oids, so the next incremental run is full (a reinstalled feed verifies nothing).

No table changes: the functions are the guard's, installed by ``reconciler guard observe | enforce``; a
database without an installed guard is left as it is. The downgrade leaves the functions in place (they are
equivalent for every caller: the next ``guard observe | enforce`` installs the code's version anyway).

Revision ID: 0010
Revises: 0012
"""

from alembic import op
from sqlalchemy import text

revision = "0010"
down_revision = "0012"


def upgrade() -> None:
    bind = op.get_bind()
    installed = bind.execute(text(
        "select exists (select from pg_proc p join pg_namespace n on n.oid = p.pronamespace "
        "where n.nspname = 'reconciler' and p.proname = 'guard_check_ledger')")).scalar_one()
    if installed:
        from reconciler import change_feed, guard  # only when a guard is installed

        tables = guard.ledger_tables(bind)
        bind.execute(text(guard.functions_sql(tables).replace(":", r"\:")))
        bind.execute(text(change_feed.triggers_sql(tables.customers, tables.entries)))


def downgrade() -> None:
    pass
