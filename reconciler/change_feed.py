"""The change feed of incremental runs: which customers were touched, and up to which point every committed
change has been compared (the verified point).

Invariant kept: while the guard's feed triggers are enabled, every committed transaction that changed a
customer's balance, or inserted, updated or deleted one of its entries (through the balance core or around
it, by any statement, COPY included), has a row ``(xid, customer_id)`` in ``reconciler.change_feed``,
written by the same transaction (so it commits or rolls back with the change), once per customer per
transaction (``ON CONFLICT DO NOTHING`` on that key: the feed's only key, so it never waits on another
session, and nothing in it references ``customers``). A TRUNCATE writes the row ``ALL_CUSTOMERS``.

Positions are PostgreSQL's own (``xid8``) and verified points are snapshots (``pg_snapshot``), never
clocks. A run takes its snapshot S and reads the feed in ONE repeatable-read transaction, so it reads
exactly the feed rows of the transactions visible in S; its comparisons run later, with snapshots that see
at least S. A transaction still open at S is not visible in S: its feed row is read by the next run, whose
starting point is S (``NOT pg_visible_in_snapshot(xid, S)``). So a change is compared by the run whose
snapshot first sees it, or by a later one; never by neither. The verified point only moves forward (the
later of two snapshots has the greater ``(xmax, xmin, -count(xip))``: ``reconciler.snapshot_order`` in SQL,
:meth:`reconciler.snapshots.Snapshot.order_key` in Python), and feed rows visible in it are pruned. Snapshot
texts are read and written through :mod:`reconciler.snapshots`, shared with the quality checks' positions.

The feed's triggers are installed and removed with the guard (:mod:`reconciler.guard` calls
:func:`functions_sql`, :func:`triggers_sql`, :func:`uninstall_sql`); without them an incremental run falls
back to a full one (:func:`decide_mode`). Writes made with triggers disabled are not in the feed: the
periodic full sweep (``RECONCILER_FULL_SWEEP_DAYS``) finds their drift.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, text

from reconciler import snapshots
from reconciler.balances.statements import CORE_WRITER, SETTLED_SETTING, WRITER_SETTING
from reconciler.errors import InvalidOperationError

MODES = ("full", "incremental")
DEFAULT_MODE = "full"
SWEEP_DAYS_ENV = "RECONCILER_FULL_SWEEP_DAYS"
DEFAULT_FULL_SWEEP_DAYS = 7
#: The feed row a TRUNCATE writes: every customer may have changed.
ALL_CUSTOMERS = -9_223_372_036_854_775_808
#: Above this many touched customers an incremental run runs full (cheaper, and its ids are not held in memory).
MAX_INCREMENTAL_CUSTOMERS = 2_000_000

#: (table role, trigger name, event, REFERENCING clause, function): the feed's statement triggers.
FEED_TRIGGERS = (
    ("customers", "reconciler_guard_feed_customers_insert", "insert", "new table as new_rows", "feed_customers"),
    ("customers", "reconciler_guard_feed_customers_update", "update", "old table as old_rows new table as new_rows",
     "feed_customers"),
    ("customers", "reconciler_guard_feed_customers_delete", "delete", "old table as old_rows", "feed_customers"),
    ("customers", "reconciler_guard_feed_customers_truncate", "truncate", "", "feed_truncate"),
    ("entries", "reconciler_guard_feed_entries_insert", "insert", "new table as new_rows", "feed_entries"),
    ("entries", "reconciler_guard_feed_entries_update", "update", "old table as old_rows new table as new_rows",
     "feed_entries"),
    ("entries", "reconciler_guard_feed_entries_delete", "delete", "old table as old_rows", "feed_entries"),
    ("entries", "reconciler_guard_feed_entries_truncate", "truncate", "", "feed_truncate"),
)
FEED_TRIGGER_NAMES = tuple(name for _, name, _, _, _ in FEED_TRIGGERS)
#: The WHEN of triggers that skip the balance core's statements (they set this transaction-local mark).
NOT_CORE = f"current_setting('{WRITER_SETTING}', true) IS DISTINCT FROM '{CORE_WRITER}'"
#: Feed triggers that skip the core's statements: every balance the core changes comes with an entry of that
#: customer appended by the same statement, which the entries trigger feeds (measured: the customers trigger,
#: with both transition tables, was two thirds of what the feed cost each payment of the core).
CORE_FED_THROUGH_ENTRIES = ("reconciler_guard_feed_customers_update",)
FEED_FUNCTIONS = ("feed_customers()", "feed_entries()", "feed_truncate()")


# ---- SQL installed with the guard -------------------------------------------------------------------------

def functions_sql(search_path: str) -> str:
    """The feed's trigger functions (SECURITY DEFINER: writers need no rights on ``reconciler``).

    No exception block (it would cost a subtransaction per statement): the insert has no foreign key, no
    check to fail and conflicts only with its own transaction, so it cannot wait; should it fail anyway,
    the write fails with it rather than go unseen by incremental runs."""
    settled = f"current_setting('{SETTLED_SETTING}', true) = 'settled'"
    return f"""
create or replace function reconciler.feed_customers() returns trigger
language plpgsql security definer set search_path = {search_path} as $feed$
begin
    if {settled} then  -- a reconciliation by the core: balance and ledger equal at its commit
        return null;
    end if;
    if tg_op = 'INSERT' then
        insert into reconciler.change_feed (xid, customer_id)
        select distinct pg_current_xact_id(), n.id from new_rows n where n.balance <> 0
        on conflict do nothing;
    elsif tg_op = 'DELETE' then
        insert into reconciler.change_feed (xid, customer_id)
        select distinct pg_current_xact_id(), o.id from old_rows o
        on conflict do nothing;
    else  -- rows whose balance changed (or whose id did)
        insert into reconciler.change_feed (xid, customer_id)
        select distinct pg_current_xact_id(), n.id from new_rows n
        where not exists (select from old_rows o where o.id = n.id and o.balance = n.balance)
        on conflict do nothing;
    end if;
    return null;
end $feed$;

create or replace function reconciler.feed_entries() returns trigger
language plpgsql security definer set search_path = {search_path} as $feed$
begin
    if {settled} then
        return null;
    end if;
    if tg_op = 'INSERT' then
        insert into reconciler.change_feed (xid, customer_id)
        select distinct pg_current_xact_id(), n.customer_id from new_rows n
        on conflict do nothing;
    elsif tg_op = 'DELETE' then
        insert into reconciler.change_feed (xid, customer_id)
        select distinct pg_current_xact_id(), o.customer_id from old_rows o
        on conflict do nothing;
    else  -- both sides: an entry may move between customers
        insert into reconciler.change_feed (xid, customer_id)
        select pg_current_xact_id(), n.customer_id from new_rows n
        union select pg_current_xact_id(), o.customer_id from old_rows o
        on conflict do nothing;
    end if;
    return null;
end $feed$;

create or replace function reconciler.feed_truncate() returns trigger
language plpgsql security definer set search_path = {search_path} as $feed$
begin
    insert into reconciler.change_feed (xid, customer_id) values (pg_current_xact_id(), {ALL_CUSTOMERS})
    on conflict do nothing;
    return null;
end $feed$;
"""


def triggers_sql(customers: str, entries: str) -> str:
    """The feed's statement triggers (transition tables). The core's writes are fed too: by the entries
    triggers (no WHEN); the balance-update trigger skips the core's statements (:data:`CORE_FED_THROUGH_ENTRIES`)."""
    parts = []
    for role, name, event, referencing, function in FEED_TRIGGERS:
        table = customers if role == "customers" else entries
        refs = f" referencing {referencing}" if referencing else ""
        when = f" when ({NOT_CORE})" if name in CORE_FED_THROUGH_ENTRIES else ""
        parts.append(f"drop trigger if exists {name} on {table};")
        parts.append(f"create trigger {name} after {event} on {table}{refs} for each statement{when} "
                     f"execute function reconciler.{function}();")
    return "\n".join(parts)


def uninstall_sql(customers: str | None, entries: str | None) -> str:
    parts = []
    for role, name, _, _, _ in FEED_TRIGGERS:
        table = customers if role == "customers" else entries
        if table is not None:
            parts.append(f"drop trigger if exists {name} on {table};")
    parts += [f"drop function if exists reconciler.{signature};" for signature in FEED_FUNCTIONS]
    return "\n".join(parts)


# ---- deciding a run's mode (pure) -------------------------------------------------------------------------

@dataclass(frozen=True)
class FeedState:
    """What the planner knows when it decides a run's mode."""

    triggers_present: bool
    disabled_triggers: tuple[str, ...]
    point: str | None  # the verified point (pg_snapshot text), None when none exists
    last_full_sweep_at: dt.datetime | None
    now: dt.datetime
    #: The feed triggers' oids: a reinstalled feed has new ones (writes in between may be missing).
    trigger_oids: tuple[int, ...] = ()
    #: ``ALTER TABLE``s of the guarded tables that no full verified run has covered yet (migration 0012): a
    #: trigger disabled and enabled again since the last point reads as enabled, but writes made meanwhile
    #: are in no feed row.
    gaps: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        return self.triggers_present and not self.disabled_triggers


@dataclass(frozen=True)
class ModeDecision:
    mode: str
    reason: str

    @property
    def fell_back(self) -> bool:
        return self.mode == "full" and self.reason.startswith("incremental requested")


def check_mode(mode: object, *, name: str = "mode") -> str:
    if not isinstance(mode, str) or mode.strip() not in MODES:
        raise InvalidOperationError(f"{name} must be incremental or full, got {mode!r}")
    return mode.strip()


def decide_mode(requested: str, state: FeedState, *, full_sweep_days: int | None,
                restricted: bool) -> ModeDecision:
    """The mode a run takes and why (pure). Incremental needs the feed's triggers, all enabled, and a
    verified point; with ``full_sweep_days`` (scheduled runs) a full sweep is due that many days after the
    last one. A run restricted to a range or ids is full over its scope."""
    if requested == "full":
        return ModeDecision("full", "restricted to the given customers" if restricted else "full requested")
    why = "incremental requested, ran full: "
    if restricted:
        return ModeDecision("full", why + "a customer range or ids was given (incremental covers everyone)")
    if not state.triggers_present:
        return ModeDecision("full", why + "the guard is off, so there is no change feed "
                                          "(turn it on with `reconciler guard observe`)")
    if state.disabled_triggers:
        names = ", ".join(state.disabled_triggers)
        return ModeDecision("full", why + f"the guard reports disabled triggers ({names}); "
                                          "writes made meanwhile are not in the change feed")
    if state.point is None:
        return ModeDecision("full", why + "no verified point exists yet")
    if state.gaps:
        shown = "; ".join(state.gaps[:3]) + (f"; and {len(state.gaps) - 3} more" if len(state.gaps) > 3 else "")
        return ModeDecision("full", why + f"the guarded tables were altered since the last full sweep ({shown}); "
                                          "writes made with a trigger disabled are not in the change feed")
    if full_sweep_days is not None:
        if state.last_full_sweep_at is None:
            return ModeDecision("full", why + "no full sweep has verified the ledger yet")
        due = state.last_full_sweep_at + dt.timedelta(days=full_sweep_days)
        if state.now >= due:
            return ModeDecision("full", why + f"the periodic full sweep is due (every {full_sweep_days} days, "
                                              f"last one {state.last_full_sweep_at:%Y-%m-%d %H:%M}Z)")
    return ModeDecision("incremental", "changes since the last verified point")


def full_sweep_days_from_env(environ: dict[str, str] | None = None) -> int:
    """``RECONCILER_FULL_SWEEP_DAYS`` (default 7, at least 1)."""
    value = (environ if environ is not None else dict(os.environ)).get(SWEEP_DAYS_ENV, "").strip()
    if not value:
        return DEFAULT_FULL_SWEEP_DAYS
    try:
        days = int(value)
    except ValueError:
        raise InvalidOperationError(f"{SWEEP_DAYS_ENV} must be a whole number of days >= 1, got {value!r}") from None
    if days < 1:
        raise InvalidOperationError(f"{SWEEP_DAYS_ENV} must be a whole number of days >= 1, got {value!r}")
    return days


# ---- reading and moving the verified point ----------------------------------------------------------------

def read_state(conn: Connection, *, now: dt.datetime | None = None) -> FeedState:
    """The feed triggers' state, the verified point and the last full sweep (finished, unrestricted)."""
    rows = conn.execute(text("""
        select t.oid, t.tgname, t.tgenabled::text as tgenabled from pg_trigger t
        where t.tgname like 'reconciler\\_guard\\_feed\\_%' and not t.tgisinternal""")).all()
    present = {r.tgname: r.tgenabled for r in rows}
    triggers_present = all(name in present for name in FEED_TRIGGER_NAMES)
    disabled = tuple(sorted(name for name, state in present.items() if state not in ("O", "A")))
    point = conn.execute(text("select snapshot from reconciler.verified_point")).scalar_one_or_none()
    sweep = conn.execute(text("""
        select max(finished_at) from reconciler.runs
        where mode = 'full' and verified_to is not null and status in ('succeeded', 'halted')""")).scalar_one()
    clock = now or conn.execute(text("select now()")).scalar_one()
    gaps = tuple(describe_gap(r.at, r.role, r.table_name, r.statement) for r in conn.execute(text(
        "select at, role, table_name, statement from reconciler.feed_gaps order by id")))
    return FeedState(triggers_present, disabled, point, sweep, clock, tuple(sorted(int(r.oid) for r in rows)), gaps)


def describe_gap(at: dt.datetime, role: str, table: str, statement: str | None) -> str:
    """One recorded ``ALTER TABLE`` for people (pure)."""
    said = " ".join((statement or "").split())
    said = said if len(said) <= 80 else said[:77] + "..."
    return f"{at:%Y-%m-%d %H:%M:%S}Z {role} on {table}: {said!r}"


@dataclass(frozen=True)
class Scope:
    """What an incremental run compares: touched customers (existing ones, in id order) plus customers with
    unresolved tasks, read in the snapshot ``snapshot`` (the point the run will reach)."""

    snapshot: str
    customer_ids: tuple[int, ...]
    touched: int
    with_tasks: int
    truncated: bool
    too_many: bool = False


def take_snapshot(conn: Connection) -> str:
    """This transaction's snapshot (call it first in a REPEATABLE READ transaction)."""
    return str(snapshots.parse(conn.execute(text("select pg_current_snapshot()::text")).scalar_one()))


def read_scope(conn: Connection, point: str, *, limit: int = MAX_INCREMENTAL_CUSTOMERS) -> Scope:
    """In the caller's REPEATABLE READ transaction: its snapshot, and the customers touched by transactions
    visible in it but not in ``point``, plus those with unresolved tasks (so corrections continue as in a
    full run). ``truncated`` when a TRUNCATE is among them."""
    snapshot = take_snapshot(conn)
    touched = int(conn.execute(text("""
        select count(distinct customer_id) from reconciler.change_feed
        where not pg_visible_in_snapshot(xid, cast(:point as pg_snapshot))"""), {"point": point}).scalar_one())
    if touched > limit:
        return Scope(snapshot, (), touched, 0, False, too_many=True)
    row = conn.execute(text("""
        with touched as (
            select distinct f.customer_id from reconciler.change_feed f
            where not pg_visible_in_snapshot(f.xid, cast(:point as pg_snapshot))),
        pending as (
            select distinct t.customer_id from reconciler.tasks t where t.status in ('open', 'needs_review'))
        select (select count(*) from touched where customer_id <> :all) as touched,
               exists (select from touched where customer_id = :all) as truncated,
               (select count(*) from pending where customer_id not in (select customer_id from touched)) as pending,
               (select coalesce(array_agg(c.id order by c.id), '{}') from customers c  -- primary key probes
                where c.id = any(array(select customer_id from touched union select customer_id from pending))
               ) as ids
        """), {"point": point, "all": ALL_CUSTOMERS}).one()
    return Scope(snapshot, tuple(int(i) for i in row.ids), int(row.touched), int(row.pending), bool(row.truncated))


def advance(conn: Connection, snapshot: str, run_id: int, *, full: bool = False) -> bool:
    """Make ``snapshot`` the verified point when it is later than the current one, then prune the feed rows it
    covers (and, after a ``full`` run, the recorded ``ALTER TABLE``s it saw); True when it moved. Serialised on
    the point's row. ``snapshot`` must be a ``pg_snapshot`` text."""
    snapshot = str(snapshots.parse(snapshot))
    conn.execute(text("""
        insert into reconciler.verified_point (id, snapshot, run_id, verified_at)
        values (true, :snap, :run, now()) on conflict (id) do nothing"""), {"snap": snapshot, "run": run_id})
    moved = conn.execute(text("""
        with current as (select snapshot from reconciler.verified_point where id for update)
        update reconciler.verified_point p set snapshot = :snap, run_id = :run, verified_at = now()
        from current
        where p.id and (current.snapshot = :snap or reconciler.snapshot_order(cast(:snap as pg_snapshot))
                        > reconciler.snapshot_order(cast(current.snapshot as pg_snapshot)))
        returning p.snapshot"""), {"snap": snapshot, "run": run_id}).scalar_one_or_none()
    if moved is None:
        return False
    prune(conn)
    if full:
        # Everyone was compared in a snapshot that sees these ALTERs, and with them (their lock waited for
        # every writer of the table) every write made while a trigger was off.
        conn.execute(text("delete from reconciler.feed_gaps "
                          "where pg_visible_in_snapshot(xid, cast(:snap as pg_snapshot))"), {"snap": snapshot})
    return True


def prune(conn: Connection) -> int:
    """Delete the feed rows the verified point covers (their changes were compared)."""
    return int(conn.execute(text("""
        delete from reconciler.change_feed f using reconciler.verified_point p
        where p.id and pg_visible_in_snapshot(f.xid, cast(p.snapshot as pg_snapshot))""")).rowcount)


def clear_point(conn: Connection) -> None:
    """Forget the verified point (the feed was off or incomplete: the next run is full)."""
    conn.execute(text("delete from reconciler.verified_point"))


def feed_size(conn: Connection) -> int:
    return int(conn.execute(text("select count(*) from reconciler.change_feed")).scalar_one())


def describe_point(snapshot: str | None) -> str:
    """A snapshot for people: ``xmin:xmax:in-progress`` as PostgreSQL writes it, or 'none'."""
    return snapshots.describe(snapshot)


def split_ids(ids: Sequence[int], chunk_size: int) -> list[tuple[int, ...]]:
    """Sorted ids in consecutive groups of at most ``chunk_size`` (pure)."""
    ordered = sorted(set(ids))
    return [tuple(ordered[i:i + chunk_size]) for i in range(0, len(ordered), chunk_size)]


def requested_mode(param: object, trigger: str, environ: dict[str, str] | None = None) -> tuple[str, int | None]:
    """``(mode, full_sweep_days)`` for an orchestrated run (pure but for the environment): an empty ``mode``
    Param means incremental for a scheduled run and full for a manual one; scheduled runs get the periodic
    full sweep (``RECONCILER_FULL_SWEEP_DAYS``), manual ones do exactly what was asked."""
    mode = ("incremental" if trigger == "scheduled" else "full") if param in (None, "") else check_mode(param)
    return mode, (full_sweep_days_from_env(environ) if trigger == "scheduled" else None)
