"""The tamper-evident audit trail: ``reconciler.audit_log``, append-only and SHA-256 hash-chained.

Every row carries ``prev_hash`` (the previous row's ``hash``; 64 zeros for the first) and
``hash = sha256(prev_hash || body)``, where ``body`` is the row's canonical JSON (``seq``, ``at``,
``kind``, ``actor``, ``data``) stored as the exact text that was hashed, so anyone can recompute a link
with any SHA-256 tool. UPDATE, DELETE and TRUNCATE are refused by triggers, as for the ledger.

Rows are appended at COMMIT. Writers call ``reconciler.append_audit(events jsonb)`` (SECURITY DEFINER, so
no login needs any privilege on the tables: a forged row with a made-up hash cannot be slipped in); it only
queues the events in ``reconciler.audit_queue`` (unlogged: its rows never outlive their transaction). A
deferred constraint trigger, ``reconciler.seal_audit``, runs when the transaction commits: it locks the
one-row ``reconciler.audit_head`` FOR UPDATE, chains the transaction's queued events in order, moves the
head and empties the queue. So the chain's lock is the LAST lock any transaction takes, held only for its
commit: a transaction holding it never waits for a customer or task row, so it can deadlock with nobody
(appending under the lock at the write itself would: a run holding the chain and then updating a task a
person's `tasks resolve` had locked, while that one waits for the chain). A rollback leaves no audit row.

Why a head row and not ``pg_advisory_xact_lock`` + ``max(seq)``: a writer in a REPEATABLE READ transaction
keeps its old snapshot after an advisory lock is granted, reads a stale ``max(seq)`` and would fork the
chain; a row lock on the head instead makes such a writer fail with a serialization error (retried), never
fork. Unique ``prev_hash`` (each hash has at most one successor) backs this up. The head row also lets
``audit verify`` see that rows were cut off the end.

Roles are NOT created here: roles are cluster-wide, and adopting a ledger must not change anyone's
privileges. ``reconciler db roles`` creates and grants them (reconciler/roles.py). No table here references
``customers``: a customer's row lock never stalls an audit append.

Revision ID: 0007
Revises: 0005 (the lead sets 0006 when the guard lands first; nothing else here depends on it)
"""

from alembic import op
from sqlalchemy import text

revision = "0007"
down_revision = "0006"

GENESIS_HASH = "0" * 64

_TABLES = f"""
create table reconciler.audit_log (
    seq bigint primary key constraint ck_audit_log_seq check (seq > 0),
    at timestamptz not null,
    kind text not null constraint ck_audit_log_kind check (kind in ('task', 'correction', 'approval', 'guard')),
    actor text not null,
    body text not null,
    prev_hash text not null constraint ck_audit_log_prev_hash check (prev_hash ~ '^[0-9a-f]{{64}}$'),
    hash text not null constraint ck_audit_log_hash check (hash ~ '^[0-9a-f]{{64}}$'),
    constraint ux_audit_log_hash unique (hash),
    constraint ux_audit_log_prev_hash unique (prev_hash)
);
create table reconciler.audit_head (
    id boolean primary key default true constraint ck_audit_head_one_row check (id),
    seq bigint not null,
    hash text not null,
    moved_at timestamptz not null default now()
);
insert into reconciler.audit_head (id, seq, hash) values (true, 0, '{GENESIS_HASH}');
create unlogged table reconciler.audit_queue (
    id bigint generated always as identity primary key,
    txid bigint not null default (pg_current_xact_id()::text)::bigint,
    kind text not null,
    actor text not null,
    data jsonb not null
);
create index ix_audit_queue_txid on reconciler.audit_queue (txid, id);
"""

# A raw string: text() would read ":MI" as a bind parameter, so those colons are escaped.
_FUNCTIONS = r"""
create or replace function reconciler.refuse_audit_change() returns trigger
language plpgsql as $$
begin
    raise exception '% is append-only: % refused', tg_table_name, tg_op
        using errcode = 'restrict_violation',
              hint = 'the audit trail is never edited; append a new event through reconciler.append_audit';
end $$;

-- events: a JSON array of {"kind", "actor", "data"}, queued in order and chained when the transaction
-- commits (reconciler.seal_audit); returns how many were queued. NULL or [] queues nothing.
create or replace function reconciler.append_audit(events jsonb) returns integer
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
declare
    ev jsonb;
    queued integer := 0;
begin
    if events is null or jsonb_typeof(events) <> 'array' then
        return 0;
    end if;
    for ev in select e.value from jsonb_array_elements(events) as e loop
        if coalesce(ev ->> 'kind', '') = '' or coalesce(ev ->> 'actor', '') = '' then
            raise exception 'an audit event needs a kind and an actor, got %', ev
                using errcode = 'invalid_parameter_value';
        end if;
        insert into reconciler.audit_queue (kind, actor, data)
        values (ev ->> 'kind', ev ->> 'actor', coalesce(ev -> 'data', '{}'::jsonb));
        queued := queued + 1;
    end loop;
    return queued;
end $$;

-- At commit (deferred constraint trigger): chain this transaction's queued events under the head's lock.
create or replace function reconciler.seal_audit() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
declare
    me bigint := (pg_current_xact_id()::text)::bigint;
    head_seq bigint;
    head_hash text;
    ev record;
    ev_at timestamptz;
    ev_body text;
begin
    -- One trigger call per queued event: the first one seals them all, the others find nothing left.
    if not exists (select 1 from reconciler.audit_queue q where q.txid = me) then
        return null;
    end if;
    -- The chain's one lock, held until this commit completes: commit order is chain order.
    select h.seq, h.hash into head_seq, head_hash from reconciler.audit_head h where h.id for update;
    for ev in select q.kind, q.actor, q.data from reconciler.audit_queue q where q.txid = me order by q.id loop
        head_seq := head_seq + 1;
        ev_at := clock_timestamp();
        ev_body := jsonb_build_object(
            'seq', head_seq,
            'at', to_char(ev_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24\:MI\:SS.US"Z"'),
            'kind', ev.kind,
            'actor', ev.actor,
            'data', ev.data)::text;
        insert into reconciler.audit_log (seq, at, kind, actor, body, prev_hash, hash)
        values (head_seq, ev_at, ev.kind, ev.actor, ev_body, head_hash,
                encode(sha256(convert_to(head_hash || ev_body, 'UTF8')), 'hex'))
        returning hash into head_hash;
    end loop;
    delete from reconciler.audit_queue q where q.txid = me;
    update reconciler.audit_head h set seq = head_seq, hash = head_hash, moved_at = clock_timestamp() where h.id;
    return null;
end $$;

revoke all on function reconciler.append_audit(jsonb) from public;
revoke all on function reconciler.seal_audit() from public;
"""

_TRIGGERS = """
create constraint trigger reconciler_audit_seal after insert on reconciler.audit_queue
    deferrable initially deferred for each row execute function reconciler.seal_audit();
create trigger reconciler_audit_append_only before update or delete on reconciler.audit_log
    for each row execute function reconciler.refuse_audit_change();
create trigger reconciler_audit_append_only_truncate before truncate on reconciler.audit_log
    for each statement execute function reconciler.refuse_audit_change();
create trigger reconciler_audit_head_kept before delete on reconciler.audit_head
    for each row execute function reconciler.refuse_audit_change();
create trigger reconciler_audit_head_kept_truncate before truncate on reconciler.audit_head
    for each statement execute function reconciler.refuse_audit_change();
"""


def upgrade() -> None:
    bind = op.get_bind()
    bind.execute(text(_TABLES))
    bind.execute(text(_FUNCTIONS))
    bind.execute(text(_TRIGGERS))


def downgrade() -> None:
    bind = op.get_bind()
    bind.execute(text("drop function if exists reconciler.append_audit(jsonb)"))
    bind.execute(text("drop table if exists reconciler.audit_queue"))
    bind.execute(text("drop function if exists reconciler.seal_audit()"))
    bind.execute(text("drop table if exists reconciler.audit_head"))
    bind.execute(text("drop table if exists reconciler.audit_log"))
    bind.execute(text("drop function if exists reconciler.refuse_audit_change()"))
