"""The guard: the database sees every write to ``customers.balance`` and ``customer_ledger_entries`` that
the balance core did not make, records it (``observe``) or refuses it (``enforce``).

Invariant kept: while the guard is on and its triggers are enabled, every committed write to a balance
or to an entry made outside :mod:`reconciler.balances` has a row in ``reconciler.bypass_writes`` (with
its application, role, statement and fingerprint), decided ``breaks_ledger`` at commit; a write that
breaks the ledger has an unresolved task (``source = 'bypass'``) from the same commit. A write the
guard refuses changes nothing. Writes made with the triggers disabled are not seen (see the README's
blind spots): the nightly full comparison is the safety net, and :func:`guard_status` says when a
trigger is disabled.

How the core is recognised without an extra round trip: each of the core's data-modifying statements
evaluates ``reconciler.balances.CORE_WRITE_MARK`` itself (``set_config('reconciler.writer', 'core', true)``, an
initplan in the WHERE of its UPDATE and INSERT, so it runs before the first row is written), and the
guard's row triggers have ``WHEN (current_setting('reconciler.writer', true) IS DISTINCT FROM 'core')``:
a core write queues no trigger event at all. The setting is transaction-local. It finds accidental
writers; it does not stop a deliberate one (anyone can set it): privileges do that.

Where each thing happens (one function per job, so the change feed of incremental runs can be added
beside them):

- ``guard_capture_customers`` / ``guard_capture_entries`` / ``guard_capture_truncate`` (row and
  TRUNCATE triggers, the writer's own rights): refuse in ``enforce`` unless the writer's
  ``application_name`` is allow-listed (trigger arguments: mode, then the allow-list), else call
  ``guard_record`` inside an exception block, so a failure of the capture is a ``WARNING``, never the
  writer's error.
- ``guard_record`` (SECURITY DEFINER: writers need no rights on ``reconciler``): one row in
  ``bypass_writes`` with the writer's context.
- the change feed of incremental runs (:mod:`reconciler.change_feed`): statement triggers without the
  not-core WHEN (the core's writes are fed too), one row per customer per transaction; installed and
  removed with the guard.
- ``guard_check_ledger`` (a deferred constraint trigger on ``bypass_writes``, django-hordak's model):
  at commit, once per (transaction, customer), compares the balance with the chain's last ``balance_after``
  (or the reconciliation anchor), in O(1) by the covering index, and with the ledger sum only when that can
  say more (the transaction wrote the customer's entries, the chain has no ``balance_after``, the customer
  is gone); sets ``breaks_ledger`` on the transaction's rows of that customer and, only when it broke,
  opens or updates the customer's unresolved task (the statement is ``reconciler.tasks.BYPASS_TASK_UPSERT``:
  the task lifecycle stays in one module). A clean bypass opens nothing and audits nothing.

Nothing in the guard takes or waits on a customer's row lock: it reads customers without locking, and
``bypass_writes`` has no foreign key to ``customers``. The task write is bounded by ``lock_timeout``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from reconciler import change_feed
from reconciler.audit import AuditEvent, append_audit
from reconciler.errors import InvalidOperationError, ReconcilerError
from reconciler.tasks import BYPASS_TASK_UPSERT

MODES = ("observe", "enforce")
#: The capture triggers' WHEN: rows the balance core wrote (its statements set the mark) queue nothing.
NOT_CORE = change_feed.NOT_CORE
#: application_name is at most NAMEDATALEN - 1 bytes.
MAX_APPLICATION_NAME = 63
STATEMENT_LIMIT = 2000
FINGERPRINT_LIMIT = 1000
INSTALL_LOCK_TIMEOUT = "5s"
TASK_LOCK_TIMEOUT = "2s"


#: (table role, trigger name): every trigger an installed guard needs.
CAPTURE_TRIGGERS = (
    ("customers", "reconciler_guard_balance_update"),
    ("customers", "reconciler_guard_balance_insert"),
    ("customers", "reconciler_guard_balance_delete"),
    ("customers", "reconciler_guard_customers_truncate"),
    ("entries", "reconciler_guard_entries"),
    ("entries", "reconciler_guard_entries_truncate"),
)
CHECK_TRIGGER = "reconciler_guard_check_ledger"
FUNCTIONS = ("guard_fingerprint(text)", "guard_refuse(text, text, bigint)",
             "guard_record(text, text, text, bigint, numeric, numeric, numeric, bigint, numeric)",
             "guard_capture_customers()", "guard_capture_entries()", "guard_capture_truncate()",
             "guard_check_ledger()")


class GuardBusyError(ReconcilerError):
    """Raised when the guard's triggers could not be changed because writers held the tables too long."""


# --------------------------------------------------------------------------------------------------
# Pure rules


def check_allow(names: Sequence[str]) -> tuple[str, ...]:
    """The allow-list as given (order kept, duplicates dropped); an empty or oversized name is an error."""
    cleaned: list[str] = []
    for name in names:
        if not isinstance(name, str) or not name.strip() or "\x00" in name:
            raise InvalidOperationError(
                f"--allow needs an application_name (e.g. --allow legacy-billing), got {name!r}")
        if len(name.encode()) > MAX_APPLICATION_NAME:
            raise InvalidOperationError(
                f"--allow {name!r} is longer than {MAX_APPLICATION_NAME} bytes; PostgreSQL truncates "
                f"application_name to that, so it could never match")
        if name not in cleaned:
            cleaned.append(name)
    return tuple(cleaned)


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise InvalidOperationError(f"guard mode must be one of {', '.join(MODES)} (or off), got {mode!r}")
    return mode


def _literal(value: str) -> str:
    """A SQL string literal (standard_conforming_strings, which PostgreSQL has on since 9.1)."""
    return "'" + value.replace("'", "''") + "'"


@dataclass(frozen=True)
class LedgerTables:
    """The schema-qualified, quoted names of the adopted ledger's two tables, and the search_path the guard's
    definer functions pin (pg_catalog first, then the ledger's schemas: triggers they fire, such as the task's
    customer check, name the ledger's tables unqualified)."""

    customers: str
    entries: str
    search_path: str = "pg_catalog, public, pg_temp"


def _refuse_or_record(what: str, customer: str, record: str, failure: str, failure_args: str) -> str:
    """The body every capture trigger shares (PL/pgSQL): in ``enforce`` refuse the write unless the writer's
    application_name is allow-listed (the trigger's arguments after the mode); else run ``record`` inside an
    exception block, so a failure of the capture is a WARNING naming ``failure``, never the writer's error."""
    return f"""    if tg_argv[0] = 'enforce'
       and not coalesce(current_setting('application_name', true) = any(tg_argv[1:]), false) then
        perform reconciler.guard_refuse({what}, tg_op, {customer});
    end if;
    begin{record}
    exception when others then
        raise warning 'reconciler guard: {failure} was not recorded: % (SQLSTATE %)',
            {failure_args}, sqlerrm, sqlstate;
    end;
    return null;"""


def functions_sql(tables: LedgerTables) -> str:
    """The guard's functions, with the ledger's tables qualified (the definer functions pin search_path)."""
    c, e = tables.customers, tables.entries
    return change_feed.functions_sql(tables.search_path) + f"""
create or replace function reconciler.guard_fingerprint(statement text) returns text
language sql immutable parallel safe as $fp$
    select left(btrim(regexp_replace(regexp_replace(regexp_replace(regexp_replace(regexp_replace(regexp_replace(
        regexp_replace(lower(statement),
        '--[^\\n]*|/\\*.*?\\*/', ' ', 'g'),                        -- comments
        'e?''([^'']|'''')*''', '?', 'g'),                          -- string literals
        '\\$[0-9]+|\\m[0-9]+(\\.[0-9]+)?([e][-+]?[0-9]+)?\\M', '?', 'g'),  -- numbers and $n parameters
        '([-+*/=<>(,]\\s*)-\\s*\\?', '\\1?', 'g'),                  -- negative literals
        '\\(\\s*\\?(\\s*,\\s*\\?)*\\s*\\)', '(?)', 'g'),           -- IN lists and VALUES rows
        '\\(\\?\\)(\\s*,\\s*\\(\\?\\))+', '(?)', 'g'),             -- several VALUES rows
        '\\s+', ' ', 'g'), ' ;'), {FINGERPRINT_LIMIT})
$fp$;

create or replace function reconciler.guard_refuse(what text, operation text, customer bigint) returns void
language plpgsql as $refuse$
declare
    app text := coalesce(nullif(current_setting('application_name', true), ''), '(no application_name)');
begin
    raise exception 'reconciler guard refused % of % for customer % (application "%", role %): only '
        'reconciler.balances may write balances and ledger entries. Write through reconciler.balances '
        '(BalanceManager.update_balance, transfer or reconcile_balance), or let this application through '
        'while it is migrated: reconciler guard enforce --allow %',
        operation, what, coalesce(customer::text, '(every row)'), app, current_user, app
        using errcode = 'insufficient_privilege',
              hint = 'write through reconciler.balances; see `reconciler writers` for the code paths to fix';
end $refuse$;

create or replace function reconciler.guard_record(
    writer_role text, table_name text, operation text, customer bigint, old_balance numeric,
    new_balance numeric, delta numeric, entry bigint, amount numeric) returns void
language plpgsql security definer set search_path = {tables.search_path} as $record$
declare
    query text := coalesce(current_query(), '');
begin
    insert into reconciler.bypass_writes
        (txid, table_name, operation, customer_id, old_balance, new_balance, delta, entry_id, amount,
         application_name, role, client_addr, backend_pid, statement, fingerprint)
    values (txid_current(), table_name, operation, customer, old_balance, new_balance, delta, entry, amount,
            coalesce(current_setting('application_name', true), ''), writer_role, inet_client_addr(),
            pg_backend_pid(), left(query, {STATEMENT_LIMIT}), reconciler.guard_fingerprint(query));
end $record$;

create or replace function reconciler.guard_capture_customers() returns trigger
language plpgsql as $capture$
declare
    customer bigint;
    before_balance numeric;
    after_balance numeric;
begin
    if tg_op = 'DELETE' then
        customer := old.id; before_balance := old.balance;
    elsif tg_op = 'INSERT' then
        customer := new.id; after_balance := new.balance;
    else
        customer := new.id; before_balance := old.balance; after_balance := new.balance;
    end if;
{_refuse_or_record("'customers.balance'", "customer", '''
        perform reconciler.guard_record(current_user::text, 'customers', tg_op, customer, before_balance,
                                        after_balance, coalesce(after_balance, 0) - coalesce(before_balance, 0),
                                        null, null);''', "a % of customers.balance (customer %)", "tg_op, customer")}
end $capture$;

create or replace function reconciler.guard_capture_entries() returns trigger
language plpgsql as $capture$
declare
    customer bigint;
begin
    customer := case when tg_op = 'DELETE' then old.customer_id else new.customer_id end;
{_refuse_or_record("'customer_ledger_entries'", "customer", '''
        if tg_op = 'INSERT' then
            perform reconciler.guard_record(current_user::text, 'customer_ledger_entries', tg_op, new.customer_id,
                                            null, null, new.amount, new.id, new.amount);
        elsif tg_op = 'DELETE' then
            perform reconciler.guard_record(current_user::text, 'customer_ledger_entries', tg_op, old.customer_id,
                                            null, null, -old.amount, old.id, old.amount);
        elsif new.customer_id is distinct from old.customer_id then  -- an entry moved between customers
            perform reconciler.guard_record(current_user::text, 'customer_ledger_entries', tg_op, old.customer_id,
                                            null, null, -old.amount, old.id, old.amount);
            perform reconciler.guard_record(current_user::text, 'customer_ledger_entries', tg_op, new.customer_id,
                                            null, null, new.amount, new.id, new.amount);
        else
            perform reconciler.guard_record(current_user::text, 'customer_ledger_entries', tg_op, new.customer_id,
                                            null, null, new.amount - old.amount, new.id, new.amount);
        end if;''', "a % of customer_ledger_entries (customer %)", "tg_op, customer")}
end $capture$;

create or replace function reconciler.guard_capture_truncate() returns trigger
language plpgsql as $capture$
begin
{_refuse_or_record("tg_table_name", "null", '''
        perform reconciler.guard_record(current_user::text, tg_table_name, tg_op, null, null, null, null, null,
                                        null);''',
                   "a TRUNCATE of %", "tg_table_name")}
end $capture$;

create or replace function reconciler.guard_check_ledger() returns trigger
language plpgsql security definer set search_path = {tables.search_path}
set lock_timeout = '{TASK_LOCK_TIMEOUT}' as $check$
declare
    decided boolean;
    entries_written boolean;
    stored numeric;
    total numeric;
    last_id bigint;
    last_after numeric;
    anchor_entry bigint;
    anchor_balance numeric;
    expected numeric;
    breaks boolean;
    ids bigint[];
    ledger numeric;
    probable text;
    writer jsonb;
    story text;
    task_id bigint;
    task_event jsonb;
begin
    -- The first check of a (transaction, customer) decides all of its rows: the others have nothing to do.
    select bool_or(w.breaks_ledger is not null), bool_or(w.table_name <> 'customers')
    into decided, entries_written
    from reconciler.bypass_writes w where w.customer_id = new.customer_id and w.txid = new.txid;
    if decided then
        return null;
    end if;
    begin
        select c.balance into stored from {c} c where c.id = new.customer_id;
        select e.id, e.balance_after into last_id, last_after from {e} e
        where e.customer_id = new.customer_id order by e.id desc limit 1;
        select r.chain_entry_id, r.balance_after into anchor_entry, anchor_balance
        from reconciler.balance_reconciliations r where r.customer_id = new.customer_id order by r.id desc limit 1;
        expected := case when anchor_balance is not null and anchor_entry is not distinct from last_id
                             then anchor_balance
                         when last_id is null then 0
                         else last_after end;  -- NULL: an entry without balance_after, no chain to check
        -- A balance written around the core is judged by the chain's end, in O(1): the balance after the last
        -- entry (or the reconciliation anchor). The ledger SUM (O(entries)) is read only when it can say more:
        -- this transaction wrote the customer's entries (an entry edited or deleted mid-chain leaves the chain's
        -- end as it was), the chain has no balance_after to compare with, or the customer is gone.
        if stored is null or entries_written or expected is null then
            select coalesce(sum(e.amount), 0) into total from {e} e where e.customer_id = new.customer_id;
        end if;
        if stored is null then  -- the customer is gone: only entries left behind break anything
            breaks := total <> 0;
        else
            breaks := coalesce(stored <> total, false) or coalesce(stored <> expected, false);
        end if;
        with marked as (
            update reconciler.bypass_writes w set breaks_ledger = breaks
            where w.customer_id = new.customer_id and w.txid = new.txid and w.breaks_ledger is null
            returning w.id)
        select array_agg(id order by id) into ids from marked;
    exception when others then
        raise warning 'reconciler guard: could not check the ledger of customer % at commit: % (SQLSTATE %)',
            new.customer_id, sqlerrm, sqlstate;
        return null;
    end;
    if not breaks or stored is null then
        return null;
    end if;
    begin
        ledger := case when stored <> total then total else expected end;  -- total NULL: not read, the chain broke
        probable := case when new.table_name = 'customers' then 'balance_written_around_ledger'
                         when new.operation = 'INSERT' then 'unapplied_entry'
                         when new.operation = 'DELETE' then 'missing_entry'
                         else 'unknown' end;
        writer := jsonb_build_object('bypass_write_id', new.id, 'application_name', new.application_name,
                                     'role', new.role, 'at', new.at, 'fingerprint', new.fingerprint,
                                     'table_name', new.table_name, 'operation', new.operation,
                                     'delta', new.delta::text);
        story := format('written around the core: %s of %s by %s (role %s) at %s; balance %s, %s %s',
                        new.operation, new.table_name,
                        coalesce(nullif(new.application_name, ''), '(no application_name)'), new.role,
                        to_char(new.at at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS"Z"'), stored::text,
                        case when stored <> total then 'ledger sum' else 'last balance_after' end, ledger::text);
        {BYPASS_TASK_UPSERT}
    exception when others then
        raise warning 'reconciler guard: customer % broke the ledger but its task was not opened: % (SQLSTATE %)',
            new.customer_id, sqlerrm, sqlstate;
    end;
    return null;
end $check$;
"""


def triggers_sql(tables: LedgerTables, mode: str, allow: Sequence[str], *, or_replace: bool = True) -> str:
    """The capture triggers for ``mode`` (their arguments: the mode, then the allow-list) and the check."""
    args = ", ".join(_literal(value) for value in (mode, *allow))
    c, e = tables.customers, tables.entries
    create = "create or replace trigger" if or_replace else "create trigger"
    specs = {
        "reconciler_guard_balance_update": (
            f"after update of balance on {c} for each row when (old.balance is distinct from new.balance "
            f"and {NOT_CORE})", "guard_capture_customers"),
        "reconciler_guard_balance_insert": (
            f"after insert on {c} for each row when (new.balance <> 0 and {NOT_CORE})", "guard_capture_customers"),
        "reconciler_guard_balance_delete": (
            f"after delete on {c} for each row when (old.balance <> 0 and {NOT_CORE})", "guard_capture_customers"),
        "reconciler_guard_customers_truncate": (
            f"before truncate on {c} for each statement when ({NOT_CORE})", "guard_capture_truncate"),
        "reconciler_guard_entries": (
            f"after insert or update or delete on {e} for each row when ({NOT_CORE})", "guard_capture_entries"),
        "reconciler_guard_entries_truncate": (
            f"before truncate on {e} for each statement when ({NOT_CORE})", "guard_capture_truncate"),
    }
    parts = []
    for name, (timing, function) in specs.items():
        table = c if " on " + c + " " in timing else e
        if not or_replace:
            parts.append(f"drop trigger if exists {name} on {table};")
        parts.append(f"{create} {name} {timing} execute function reconciler.{function}({args});")
    parts.append(f"""drop trigger if exists {CHECK_TRIGGER} on reconciler.bypass_writes;
create constraint trigger {CHECK_TRIGGER} after insert on reconciler.bypass_writes
    deferrable initially deferred for each row when (new.customer_id is not null)
    execute function reconciler.guard_check_ledger();""")
    parts.append(change_feed.triggers_sql(c, e))
    return "\n".join(parts)


def uninstall_sql(tables: LedgerTables | None) -> str:
    parts = []
    if tables is not None:
        for role, name in CAPTURE_TRIGGERS:
            table = tables.customers if role == "customers" else tables.entries
            parts.append(f"drop trigger if exists {name} on {table};")
    parts.append(f"drop trigger if exists {CHECK_TRIGGER} on reconciler.bypass_writes;")
    parts += [f"drop function if exists reconciler.{signature};" for signature in FUNCTIONS]
    parts.append(change_feed.uninstall_sql(tables.customers if tables else None, tables.entries if tables else None))
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------------
# Installing and removing


def ledger_tables(conn: Connection) -> LedgerTables:
    """The ledger's tables as this connection's search_path resolves them (the names the core uses)."""
    row = conn.execute(text("""
        with ledger as (
            select t.role, c.relname, n.nspname from (values ('customers', to_regclass('customers')),
                ('entries', to_regclass('customer_ledger_entries'))) as t (role, oid)
            join pg_class c on c.oid = t.oid join pg_namespace n on n.oid = c.relnamespace)
        select (select format('%I.%I', nspname, relname) from ledger where role = 'customers') as customers,
               (select format('%I.%I', nspname, relname) from ledger where role = 'entries') as entries,
               (select string_agg(distinct format('%I', nspname), ', ') from ledger) as schemas""")).one()
    if row.customers is None or row.entries is None:
        raise InvalidOperationError("customers and customer_ledger_entries do not exist here; run "
                                    "`reconciler db upgrade` first")
    return LedgerTables(row.customers, row.entries, f"pg_catalog, {row.schemas}, pg_temp")


def _server_version(conn: Connection) -> int:
    return int(conn.execute(text("show server_version_num")).scalar_one())


def _changing(engine: Engine, body: str, change: dict[str, object]) -> None:
    try:
        with engine.begin() as conn:
            conn.execute(text(f"set local lock_timeout = '{INSTALL_LOCK_TIMEOUT}'"))
            conn.execute(text(body.replace(":", r"\:")))
            # The mode change is on the audit chain, in the same transaction (who: the database login).
            who = str(conn.execute(text("select session_user")).scalar_one())
            append_audit(conn, AuditEvent("guard", who, change))
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) == "55P03":
            raise GuardBusyError(
                f"the guard's triggers could not be changed within {INSTALL_LOCK_TIMEOUT}: long transactions are "
                f"writing customers or customer_ledger_entries; nothing changed, try again") from exc
        raise


def install(engine: Engine, mode: str, allow: Sequence[str] = ()) -> GuardStatus:
    """Install (or switch) the guard in ``mode`` with ``allow``, in one transaction; idempotent."""
    mode = check_mode(mode)
    allow = check_allow(allow)
    with engine.connect() as conn:
        tables = ledger_tables(conn)
        or_replace = _server_version(conn) >= 140000
    # A feed that was off or incomplete until now may have missed writes: the verified point is forgotten in
    # the same transaction, so the next run is full.
    forget = "" if _feed_complete(engine) else "\ndelete from reconciler.verified_point;"
    _changing(engine, functions_sql(tables) + "\n" + triggers_sql(tables, mode, allow, or_replace=or_replace)
              + forget, {"mode": mode, "allow": list(allow)})
    return guard_status(engine)


def _feed_complete(engine: Engine) -> bool:
    with engine.connect() as conn:
        state = change_feed.read_state(conn)
    return state.triggers_present and not state.disabled_triggers


def uninstall(engine: Engine) -> GuardStatus:
    """Remove every trigger and function of the guard (the recorded bypass writes stay); idempotent."""
    with engine.connect() as conn:
        try:
            tables: LedgerTables | None = ledger_tables(conn)
        except InvalidOperationError:
            tables = None
    _changing(engine, uninstall_sql(tables) + "\ndelete from reconciler.verified_point;", {"mode": "off", "allow": []})
    return guard_status(engine)


# --------------------------------------------------------------------------------------------------
# Status


@dataclass(frozen=True)
class TriggerState:
    table_name: str
    name: str
    tgenabled: str  # O: fires (origin and local), A: always, R: replica sessions only, D: disabled
    arguments: tuple[str, ...]

    @property
    def enabled(self) -> bool:
        """Fires for ordinary sessions (``session_replication_role = origin``)."""
        return self.tgenabled in ("O", "A")


@dataclass(frozen=True)
class GuardStatus:
    mode: str  # off, observe, enforce, or incomplete (some triggers missing or disagreeing)
    allow: tuple[str, ...]
    triggers: tuple[TriggerState, ...]
    missing: tuple[str, ...]
    since_run_id: int | None = None
    since: dt.datetime | None = None
    bypass_writes_since: int = 0
    broke_ledger_since: int = 0
    writers_since: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def disabled(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.triggers if not t.enabled)

    @property
    def healthy(self) -> bool:
        """Off, or on with every trigger present and enabled."""
        return self.mode == "off" or (self.mode in MODES and not self.missing and not self.disabled)

    def to_json(self) -> dict[str, object]:
        return {
            "mode": self.mode, "allow": list(self.allow), "healthy": self.healthy,
            "all_triggers_enabled": not self.disabled and not self.missing and self.mode != "off",
            "triggers": [{"table": t.table_name, "name": t.name, "tgenabled": t.tgenabled, "enabled": t.enabled}
                         for t in self.triggers],
            "disabled": list(self.disabled), "missing": list(self.missing),
            "since_run_id": self.since_run_id, "since": self.since.isoformat() if self.since else None,
            "bypass_writes_since_previous_run": self.bypass_writes_since,
            "broke_ledger_since_previous_run": self.broke_ledger_since,
            "writers_since_previous_run": self.writers_since, "notes": list(self.notes),
        }


def read_mode(triggers: Sequence[TriggerState]) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """(mode, allow-list, missing trigger names) from the installed triggers (pure)."""
    present = {t.name: t for t in triggers}
    expected = [name for _, name in CAPTURE_TRIGGERS] + [CHECK_TRIGGER, *change_feed.FEED_TRIGGER_NAMES]
    missing = tuple(name for name in expected if name not in present)
    captures = [present[name] for _, name in CAPTURE_TRIGGERS if name in present]
    if not captures:
        partial = CHECK_TRIGGER in present or any(name in present for name in change_feed.FEED_TRIGGER_NAMES)
        return "off", (), (missing if partial else ())
    arguments = {t.arguments for t in captures}
    if len(arguments) != 1:
        return "incomplete", (), missing
    (args,) = arguments
    mode = args[0] if args and args[0] in MODES else "incomplete"
    return (mode if not missing else "incomplete"), tuple(args[1:]), missing


_TRIGGERS = text("""
select c.relname as table_name, t.tgname as name, t.tgenabled::text as tgenabled, t.tgargs
from pg_trigger t join pg_class c on c.oid = t.tgrelid
where t.tgname like 'reconciler\\_guard\\_%' and not t.tgisinternal
order by c.relname, t.tgname
""")

_SINCE = text("""
with latest as (select id, started_at from reconciler.runs order by id desc limit 1)
select (select id from latest) as run_id, (select started_at from latest) as since,
       count(*) as writes, count(*) filter (where w.breaks_ledger) as broke,
       count(distinct (w.application_name, w.role, w.fingerprint)) as writers
from reconciler.bypass_writes w
where w.at >= coalesce((select started_at from latest), '-infinity')
""")


_DDL_WATCH = text("""
select exists (select from pg_event_trigger where evtname = 'reconciler_ledger_ddl' and evtenabled <> 'D') as watched,
       (select count(*) from reconciler.feed_gaps) as pending, (select min(at) from reconciler.feed_gaps) as first
""")


def read_triggers(conn: Connection) -> tuple[TriggerState, ...]:
    """The guard's triggers as ``pg_trigger`` has them (arguments decoded from ``tgargs``)."""
    return tuple(
        TriggerState(r.table_name, r.name, r.tgenabled,
                     tuple(part.decode() for part in bytes(r.tgargs).split(b"\x00")[:-1]))
        for r in conn.execute(_TRIGGERS))


def guard_status(engine: Engine) -> GuardStatus:
    """The installed guard as the database has it (``pg_trigger``), and the bypass writes since the latest run."""
    with engine.connect() as conn:
        triggers = read_triggers(conn)
        since = conn.execute(_SINCE).one()
        watch = conn.execute(_DDL_WATCH).one()
    mode, allow, missing = read_mode(triggers)
    notes = []
    if mode != "off":
        notes.append("writes with the triggers disabled (session_replication_role = replica, ALTER TABLE ... "
                     "DISABLE TRIGGER, a restore) are not seen; the nightly full comparison still finds their drift")
        if not watch.watched:
            notes.append("ALTER TABLEs of the ledger are not watched (the event trigger reconciler_ledger_ddl is "
                         "missing: event triggers need a superuser; run `reconciler db upgrade` as one): a trigger "
                         "disabled and enabled again between two runs goes unnoticed until the next full sweep")
    if watch.pending:
        notes.append(f"{watch.pending} ALTER TABLE(s) of the guarded tables since the last full sweep (the first "
                     f"at {watch.first:%Y-%m-%d %H:%M}Z, see reconciler.feed_gaps): the next run is full")
    return GuardStatus(mode, allow, triggers, missing, since.run_id, since.since, int(since.writes),
                       int(since.broke), int(since.writers), tuple(notes))
