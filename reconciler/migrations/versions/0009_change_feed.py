"""Incremental runs: the change feed, the verified point, and each run's mode and points.

- ``reconciler.change_feed (xid xid8, customer_id bigint)``, primary key ``(xid, customer_id)``: one row per
  customer per transaction that touched it (written by the guard's feed triggers, ``reconciler/change_feed.py``).
  No foreign key to ``customers``: a feed write never waits on a customer's row lock, and a row outlives a
  deleted customer.
- ``reconciler.verified_point``: one row, the snapshot (``pg_snapshot`` as text) up to which every committed
  change has been compared; ``reconciler.snapshot_order`` orders two snapshots of the same cluster in time.
- ``reconciler.runs`` gains ``mode``, ``mode_reason``, ``verified_from``, ``verified_to``;
  ``reconciler.run_chunks`` gains ``customer_ids`` (an incremental chunk compares only these).
- A guard installed before this revision gets its feed triggers now (else it would read as incomplete).

Revision ID: 0009
Revises: 0007
"""

from alembic import op
from sqlalchemy import text

revision = "0009"
down_revision = "0007"


def upgrade() -> None:
    bind = op.get_bind()
    bind.execute(text("""
        create table reconciler.change_feed (
            xid xid8 not null,
            customer_id bigint not null,
            primary key (xid, customer_id)
        )"""))
    bind.execute(text("""
        create table reconciler.verified_point (
            id boolean primary key default true constraint ck_verified_point_single check (id),
            snapshot text not null,
            run_id bigint,
            verified_at timestamptz not null default now()
        )"""))
    bind.execute(text("""
        create function reconciler.snapshot_order(s pg_snapshot) returns numeric[]
        language sql immutable parallel safe as $$
            select array[pg_snapshot_xmax(s)::text::numeric, pg_snapshot_xmin(s)::text::numeric,
                         -(select count(*) from pg_snapshot_xip(s))::numeric]
        $$"""))
    bind.execute(text("""
        alter table reconciler.runs
            add column mode text constraint ck_runs_mode check (mode in ('full', 'incremental')),
            add column mode_reason text,
            add column verified_from text,
            add column verified_to text"""))
    bind.execute(text("alter table reconciler.run_chunks add column customer_ids bigint[]"))
    installed = bind.execute(text(
        "select exists (select from pg_trigger where tgname = 'reconciler_guard_entries' and not tgisinternal)"
    )).scalar_one()
    if installed:
        from reconciler import change_feed, guard  # only when a guard is installed

        tables = guard.ledger_tables(bind)
        bind.execute(text(change_feed.functions_sql(tables.search_path)))
        bind.execute(text(change_feed.triggers_sql(tables.customers, tables.entries)))


def downgrade() -> None:
    bind = op.get_bind()
    for function in ("feed_customers()", "feed_entries()", "feed_truncate()"):
        bind.execute(text(f"drop function if exists reconciler.{function} cascade"))
    bind.execute(text("alter table reconciler.run_chunks drop column if exists customer_ids"))
    bind.execute(text("""
        alter table reconciler.runs drop column if exists mode, drop column if exists mode_reason,
            drop column if exists verified_from, drop column if exists verified_to"""))
    bind.execute(text("drop function if exists reconciler.snapshot_order(pg_snapshot)"))
    bind.execute(text("drop table if exists reconciler.verified_point"))
    bind.execute(text("drop table if exists reconciler.change_feed"))
