"""Trigger toggles the change feed cannot see: ``reconciler.feed_gaps`` and the event trigger that fills it.

``ALTER TABLE customers DISABLE TRIGGER ...``, a write, then ``ENABLE TRIGGER`` leaves the catalog exactly as
it was: the feed's triggers read as enabled again, yet the write is in no feed row, so an incremental run
would never compare it. An event trigger at ``ddl_command_end`` records every ``ALTER TABLE`` of a table
(or a partition of a table) that carries the guard's feed triggers, committed with the DDL itself. A
pending row makes the next run full (``reconciler.change_feed.decide_mode``); a full run whose verified
snapshot sees the row prunes it. ``ALTER TABLE ... ENABLE/DISABLE TRIGGER`` takes a SHARE ROW EXCLUSIVE lock,
which waits for every transaction that wrote the table, so a snapshot that sees the re-enabling row sees every
write made while the triggers were off.

Recording every ``ALTER TABLE`` (a new column, an attached partition) and not only trigger toggles errs on the
safe side: the ledger's shape changed, and one full run follows. The event trigger fires ALWAYS, so a session
in ``session_replication_role = replica`` is still seen when it alters the table (its plain writes are not:
the README lists that blind spot).

Event triggers need a superuser; without one the table is created and the trigger is not, and
``reconciler guard status`` says so.

Revision ID: 0012
"""

from alembic import op
from sqlalchemy import text

revision = "0012"
down_revision = "0008"

FUNCTION = """
create function reconciler.note_ledger_ddl() returns event_trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
declare
    r record;
begin
    for r in select * from pg_event_trigger_ddl_commands()
             where classid = 'pg_class'::regclass and command_tag = 'ALTER TABLE' loop
        if exists (select from pg_trigger t
                   where t.tgrelid = coalesce(pg_partition_root(r.objid), r.objid)
                     and t.tgname like 'reconciler\\_guard\\_feed\\_%' and not t.tgisinternal) then
            -- session_user: inside a security definer function current_user is the definer
            insert into reconciler.feed_gaps (table_name, command_tag, role, statement)
            values (r.object_identity, r.command_tag, session_user, left(current_query(), 1000));
        end if;
    end loop;
exception when others then
    -- The DDL must not fail because of the watch; a missed row only costs the safety net (the full sweep).
    raise warning 'reconciler: could not record a ledger ALTER TABLE (%): %', sqlstate, sqlerrm;
end $$"""


def upgrade() -> None:
    bind = op.get_bind()
    bind.execute(text("""
        create table reconciler.feed_gaps (
            id bigint generated always as identity primary key,
            at timestamptz not null default now(),
            xid xid8 not null default pg_current_xact_id(),
            table_name text not null,
            command_tag text not null,
            role text not null,
            application_name text default current_setting('application_name', true),
            statement text
        )"""))
    superuser = bind.execute(text("select rolsuper from pg_roles where rolname = current_user")).scalar_one()
    if superuser:
        bind.execute(text(FUNCTION))
        bind.execute(text("""
            create event trigger reconciler_ledger_ddl on ddl_command_end when tag in ('ALTER TABLE')
            execute function reconciler.note_ledger_ddl()"""))
        bind.execute(text("alter event trigger reconciler_ledger_ddl enable always"))


def downgrade() -> None:
    bind = op.get_bind()
    bind.execute(text("drop event trigger if exists reconciler_ledger_ddl"))
    bind.execute(text("drop function if exists reconciler.note_ledger_ddl()"))
    bind.execute(text("drop table if exists reconciler.feed_gaps"))
