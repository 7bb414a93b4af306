"""Bookkeeping never waits on a customer's row lock: ``reconciler.tasks`` no longer REFERENCES ``customers``.

Why: a foreign key check takes a KEY SHARE lock on the referenced row, and a company's service holding
``SELECT ... FOR UPDATE`` on a customer (Django's ``select_for_update()`` around a slow payment, a batch
job in a long transaction) blocks that lock. Upserting a task for that customer then waited for the
service, and the whole night's run failed on a lock timeout. No other key-share-free form of a foreign key
exists, so the reference is kept by two triggers instead, which read and never lock a customer row:

- inserting a task (or changing its ``customer_id``) checks that the customer exists with a plain read
  (SQLSTATE 23503, like the foreign key it replaces);
- deleting a customer, or changing its id, is refused while tasks reference it (23503 too).

What a plain read cannot give: a task inserted while another transaction deletes its customer, both
uncommitted, can leave a task whose customer is gone. Customers with ledger entries cannot be deleted at
all (the ledger's own foreign key), and reconciler only opens tasks for customers it just read, so the
window is a customer without entries deleted during the run that found it drifting. The unique
"one unresolved task per customer" index is unchanged.

``reconciler.balance_reconciliations`` keeps its foreign key: only the balance core writes it, inside the
transaction that already holds the customer's row lock, so its check never waits on anyone.

Revision ID: 0005
Revises: 0004
"""

from alembic import op
from sqlalchemy import text

revision = "0005"
down_revision = "0004"

_FUNCTIONS = """
create or replace function reconciler.check_task_customer() returns trigger
language plpgsql as $$
begin
    -- A plain read: it takes no row lock, so a customer locked by another session never stalls it.
    if not exists (select 1 from customers c where c.id = new.customer_id) then
        raise exception 'reconciler.tasks: customer % does not exist in customers', new.customer_id
            using errcode = 'foreign_key_violation',
                  hint = 'tasks are opened only for existing customers; check the customer id';
    end if;
    return new;
end $$;

create or replace function reconciler.refuse_customer_with_tasks() returns trigger
language plpgsql as $$
begin
    if exists (select 1 from reconciler.tasks t where t.customer_id = old.id) then
        raise exception 'customer % has reconciliation tasks in reconciler.tasks: % refused', old.id, tg_op
            using errcode = 'foreign_key_violation',
                  hint = 'resolve or archive the customer''s reconciliation tasks first';
    end if;
    return case when tg_op = 'DELETE' then old else new end;
end $$;
"""

_TRIGGERS = """
create trigger reconciler_task_customer_exists before insert or update of customer_id on reconciler.tasks
    for each row execute function reconciler.check_task_customer();
drop trigger if exists reconciler_customer_has_tasks on customers;
create trigger reconciler_customer_has_tasks before delete or update of id on customers
    for each row execute function reconciler.refuse_customer_with_tasks();
"""


def _task_customer_foreign_keys() -> list[str]:
    rows = op.get_bind().execute(text("""
        select con.conname from pg_constraint con
        where con.conrelid = 'reconciler.tasks'::regclass and con.contype = 'f'
          and con.confrelid = 'customers'::regclass"""))
    return [row.conname for row in rows]


def upgrade() -> None:
    bind = op.get_bind()
    for name in _task_customer_foreign_keys():
        bind.execute(text(f'alter table reconciler.tasks drop constraint "{name}"'))
    bind.execute(text(_FUNCTIONS))
    bind.execute(text(_TRIGGERS))


def downgrade() -> None:
    bind = op.get_bind()
    bind.execute(text("drop trigger if exists reconciler_customer_has_tasks on customers"))
    bind.execute(text("drop trigger if exists reconciler_task_customer_exists on reconciler.tasks"))
    bind.execute(text("drop function if exists reconciler.refuse_customer_with_tasks()"))
    bind.execute(text("drop function if exists reconciler.check_task_customer()"))
    bind.execute(text("""alter table reconciler.tasks add constraint tasks_customer_id_fkey
                         foreign key (customer_id) references customers (id)"""))
