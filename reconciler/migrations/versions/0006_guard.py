"""The guard's record of writes made around the balance core: ``reconciler.bypass_writes``, and tasks with
``source = 'bypass'`` (opened at commit by the guard's deferred check).

The table has no foreign key to ``customers`` on purpose: the guard's writes must never wait on a
customer's row lock, and a record must outlive the customer it names. The guard's functions and
triggers are not installed here: ``reconciler guard observe | enforce`` installs them and ``guard off``
removes them (see ``reconciler/guard.py``).

Revision ID: 0006
Revises: 0005
"""

from alembic import op
from sqlalchemy import text

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    bind = op.get_bind()
    bind.execute(text("""
        create table reconciler.bypass_writes (
            id bigint generated always as identity primary key,
            at timestamptz not null default clock_timestamp(),
            txid bigint not null,
            table_name text not null,
            operation text not null,
            customer_id bigint,
            old_balance numeric(18,2),
            new_balance numeric(18,2),
            delta numeric(20,2),
            entry_id bigint,
            amount numeric(18,2),
            application_name text not null default '',
            role text not null,
            client_addr inet,
            backend_pid integer not null,
            statement text,
            fingerprint text,
            breaks_ledger boolean,
            refused boolean not null default false
        )"""))
    bind.execute(text("create index ix_bypass_writes_at on reconciler.bypass_writes (at)"))
    bind.execute(text("create index ix_bypass_writes_customer on reconciler.bypass_writes (customer_id, txid)"))
    bind.execute(text("alter table reconciler.tasks drop constraint ck_tasks_source"))
    bind.execute(text("""alter table reconciler.tasks add constraint ck_tasks_source
                         check (source in ('run', 'realtime', 'bypass'))"""))


def downgrade() -> None:
    bind = op.get_bind()
    # An installed guard depends on the table: its functions go, and their triggers with them (CASCADE).
    for function in ("guard_check_ledger()", "guard_capture_customers()", "guard_capture_entries()",
                     "guard_capture_truncate()",
                     "guard_record(text, text, text, bigint, numeric, numeric, numeric, bigint, numeric)",
                     "guard_refuse(text, text, bigint)", "guard_fingerprint(text)"):
        bind.execute(text(f"drop function if exists reconciler.{function} cascade"))
    bind.execute(text("update reconciler.tasks set source = 'realtime' where source = 'bypass'"))
    bind.execute(text("alter table reconciler.tasks drop constraint ck_tasks_source"))
    bind.execute(text("""alter table reconciler.tasks add constraint ck_tasks_source
                         check (source in ('run', 'realtime'))"""))
    bind.execute(text("drop table if exists reconciler.bypass_writes"))
