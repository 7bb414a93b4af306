"""The database's guard that the ledger is append-only: UPDATE, DELETE and TRUNCATE on
``customer_ledger_entries`` are refused by a trigger, whatever client tries them.

Migration 0001 installs it on ledgers it creates; ``reconciler db harden`` installs it on adopted
ones. This text is part of migration history: change it only together with a new migration.
"""

FUNCTION_SQL = """
create or replace function reconciler.refuse_ledger_change() returns trigger
language plpgsql as $$
begin
    raise exception 'customer_ledger_entries is append-only: % refused', tg_op
        using errcode = 'restrict_violation',
              hint = 'post a correcting entry through reconciler.balances instead of changing history';
end $$;
"""

TRIGGERS_SQL = """
drop trigger if exists reconciler_append_only on customer_ledger_entries;
create trigger reconciler_append_only before update or delete on customer_ledger_entries
    for each row execute function reconciler.refuse_ledger_change();
drop trigger if exists reconciler_append_only_truncate on customer_ledger_entries;
create trigger reconciler_append_only_truncate before truncate on customer_ledger_entries
    for each statement execute function reconciler.refuse_ledger_change();
"""
