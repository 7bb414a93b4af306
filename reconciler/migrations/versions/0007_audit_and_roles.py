"""The tamper-evident audit trail: ``reconciler.audit_log``, append-only and SHA-256 hash-chained.

Every row carries ``prev_hash`` (the previous row's ``hash``; 64 zeros for the first) and
``hash = sha256(prev_hash || body)``, where ``body`` is the row's canonical JSON (``seq``, ``at``,
``kind``, ``actor``, ``data``) stored as the exact text that was hashed, so anyone can recompute a link
with any SHA-256 tool. UPDATE, DELETE and TRUNCATE are refused by triggers, as for the ledger.

Rows are appended only by ``reconciler.append_audit(events jsonb)`` (SECURITY DEFINER, so no login needs
INSERT on the log: a forged row with a made-up hash cannot be inserted around it). It locks the one-row
``reconciler.audit_head`` FOR UPDATE, appends, and moves the head. Why a head row and not
``pg_advisory_xact_lock`` + ``max(seq)``: a writer in a REPEATABLE READ transaction keeps its old snapshot
after an advisory lock is granted, reads a stale ``max(seq)`` and would fork the chain; a row lock on the
head instead makes such a writer fail with a serialization error (retried), never fork. Unique
``prev_hash`` (each hash has at most one successor) backs this up. The head row also lets
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
down_revision = "0004"

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

-- events: a JSON array of {"kind", "actor", "data"}; NULL or [] appends nothing and takes no lock.
-- Returns the head after the append: {"seq", "hash", "appended"}.
create or replace function reconciler.append_audit(events jsonb) returns jsonb
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
declare
    head_seq bigint;
    head_hash text;
    ev jsonb;
    ev_at timestamptz;
    ev_body text;
    appended integer := 0;
begin
    if events is null or jsonb_typeof(events) <> 'array' or jsonb_array_length(events) = 0 then
        return null;
    end if;
    -- The chain's one lock: held until this transaction ends, so commit order is chain order.
    select h.seq, h.hash into head_seq, head_hash from reconciler.audit_head h where h.id for update;
    for ev in select e.value from jsonb_array_elements(events) as e loop
        if coalesce(ev ->> 'kind', '') = '' or coalesce(ev ->> 'actor', '') = '' then
            raise exception 'an audit event needs a kind and an actor, got %', ev
                using errcode = 'invalid_parameter_value';
        end if;
        head_seq := head_seq + 1;
        ev_at := clock_timestamp();
        ev_body := jsonb_build_object(
            'seq', head_seq,
            'at', to_char(ev_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24\:MI\:SS.US"Z"'),
            'kind', ev ->> 'kind',
            'actor', ev ->> 'actor',
            'data', coalesce(ev -> 'data', '{}'::jsonb))::text;
        insert into reconciler.audit_log (seq, at, kind, actor, body, prev_hash, hash)
        values (head_seq, ev_at, ev ->> 'kind', ev ->> 'actor', ev_body, head_hash,
                encode(sha256(convert_to(head_hash || ev_body, 'UTF8')), 'hex'))
        returning hash into head_hash;
        appended := appended + 1;
    end loop;
    update reconciler.audit_head h set seq = head_seq, hash = head_hash, moved_at = clock_timestamp() where h.id;
    return jsonb_build_object('seq', head_seq, 'hash', head_hash, 'appended', appended);
end $$;

revoke all on function reconciler.append_audit(jsonb) from public;
"""

_TRIGGERS = """
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
    bind.execute(text("drop table if exists reconciler.audit_head"))
    bind.execute(text("drop table if exists reconciler.audit_log"))
    bind.execute(text("drop function if exists reconciler.refuse_audit_change()"))
