"""Reconciliation tasks: at most one unresolved task per customer, and an audit trail of every transition.

This module is the ONE writer of ``reconciler.tasks``: runs open and refresh tasks here, the balance core
opens its realtime task here (:func:`open_realtime_task`, inside the core's own transaction), and the
correction executor records outcomes here. It imports neither the balance core nor the corrections: it
takes plain values, so the lifecycle can be read on its own.

Invariants: a rerun updates the customer's unresolved task, never opens a second one (the database's
partial unique index ``ux_tasks_one_unresolved_per_customer`` backs this up); the lifecycle is
``open -> needs_review -> corrected | dismissed`` (``open`` may go straight to ``corrected`` or
``dismissed``); a resolved task never changes again; every transition appends an event
``{at, by, action, from, to, note, run_id, values}`` to ``resolution.events`` and, in the same statement,
one ``task`` row to the hash-chained ``reconciler.audit_log`` (:mod:`reconciler.audit`).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, RowMapping, bindparam, func, select, text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.types import BigInteger

from reconciler.audit import task_events_sql
from reconciler.errors import InvalidOperationError, TaskNotFoundError
from reconciler.money import format_money
from reconciler.schema import TASK_STATUSES, UNRESOLVED_STATUSES, tasks
from reconciler.vocabulary import KEY_PREFIX, correction_key

ACTIONS = ("correct", "dismiss")

# One event, appended to resolution.events; ``{from}`` is the task's status before the update.
# Every value is cast: jsonb_build_object cannot infer the type of an untyped NULL parameter.
_APPEND_EVENT = """jsonb_set(
    {base}, '{{events}}',
    coalesce({res} -> 'events', '[]'::jsonb) || jsonb_build_array(jsonb_build_object(
        'at', now(), 'by', cast({by} as text), 'action', cast({action} as text), 'from', cast({frm} as text),
        'to', cast({to} as text), 'note', cast({note} as text), 'run_id', cast({run} as bigint),
        'values', cast({values} as jsonb))))"""


def _event(*, res: str = "t.resolution", by: str = ":by", action: str = ":action", frm: str = "t.status",
           to: str = ":to", note: str = ":note", run: str = ":run", values: str = ":values",
           clear_pending: bool = True) -> str:
    """SQL for ``res`` with one event appended (and, with ``clear_pending``, the in-flight marker removed)."""
    base = f"({res} - 'pending')" if clear_pending else res
    return _APPEND_EVENT.format(base=base, res=res, by=by, action=action, frm=frm, to=to, note=note, run=run,
                                values=values)


def _audited(write: str = "", *, ctes: str = "", extra: str = "", audit_rows: str = "changed c") -> str:
    """``write`` (an INSERT or UPDATE of ``reconciler.tasks`` aliased ``t``, without RETURNING) as one statement
    that also appends one audit row per task it changed (the event it just added), after the task writes;
    it returns the changed rows (``id``, ``customer_id``, ``audit_event`` and ``extra``)."""
    assert write, "a task statement needs its write"
    prefix = f"{ctes},\n" if ctes else ""
    return f"""with {prefix}changed as (
{write}
returning t.id, t.customer_id, t.resolution -> 'events' -> -1 as audit_event{extra}
),
audited as ({task_events_sql(audit_rows)})
select changed.* from changed cross join audited"""


@dataclass(frozen=True)
class TaskView:
    """One task as callers see it."""

    id: int
    run_id: int | None
    last_seen_run_id: int | None
    customer_id: int
    stored_balance: Decimal
    ledger_sum: Decimal
    drift: Decimal
    status: str
    source: str
    cause: str | None
    evidence: Mapping[str, Any] | None
    opened_at: dt.datetime
    updated_at: dt.datetime
    resolved_at: dt.datetime | None
    resolution: Mapping[str, Any]
    correction_entry_id: int | None

    @property
    def unresolved(self) -> bool:
        return self.status in UNRESOLVED_STATUSES

    @property
    def events(self) -> list[Mapping[str, Any]]:
        return list(self.resolution.get("events", []))

    def to_json(self) -> dict[str, object]:
        """JSON-able (decimals as strings, times ISO 8601)."""
        return {
            "id": self.id, "run_id": self.run_id, "last_seen_run_id": self.last_seen_run_id,
            "customer_id": self.customer_id, "stored_balance": str(self.stored_balance),
            "ledger_sum": str(self.ledger_sum), "drift": str(self.drift), "status": self.status,
            "source": self.source, "cause": self.cause, "evidence": dict(self.evidence or {}),
            "opened_at": self.opened_at.isoformat(), "updated_at": self.updated_at.isoformat(),
            "resolved_at": self.resolved_at.isoformat() if self.resolved_at else None,
            "resolution": dict(self.resolution), "correction_entry_id": self.correction_entry_id,
        }


def _view(row: RowMapping) -> TaskView:
    return TaskView(**{name: row[name] for name in TaskView.__dataclass_fields__})


# ---- opening and refreshing from a run's staged findings -------------------------------------------------

_UPSERT_FROM_FINDINGS = text(_audited(f"""
insert into reconciler.tasks as t (run_id, customer_id, stored_balance, ledger_sum, drift, status, source,
                                   cause, evidence, opened_at, updated_at, last_seen_run_id, resolution)
select f.run_id, f.customer_id, f.stored_balance, f.ledger_sum, f.drift, 'open', 'run', f.cause, f.evidence,
       now(), now(), f.run_id,
       jsonb_build_object('events', jsonb_build_array(jsonb_build_object(
           'at', now(), 'by', cast(:by as text), 'action', 'open', 'from', null, 'to', 'open', 'note', 'drift found',
           'run_id', f.run_id, 'values', jsonb_build_object(
               'stored_balance', f.stored_balance::text, 'ledger_sum', f.ledger_sum::text,
               'drift', f.drift::text, 'cause', f.cause))))
from reconciler.findings f
where f.run_id = :run and f.customer_id between :first and :last
order by f.customer_id
on conflict (customer_id) where status in ('open', 'needs_review') do update set
    stored_balance = excluded.stored_balance, ledger_sum = excluded.ledger_sum, drift = excluded.drift,
    cause = excluded.cause, evidence = excluded.evidence, last_seen_run_id = excluded.last_seen_run_id,
    updated_at = now(),
    resolution = case when t.drift is distinct from excluded.drift
        then {_event(by=":by", action="'update'", to="t.status", note="'drift changed since last seen'",
                     run="excluded.last_seen_run_id",
                     values="jsonb_build_object('old_drift', t.drift::text, 'drift', excluded.drift::text, "
                            "'stored_balance', excluded.stored_balance::text, "
                            "'ledger_sum', excluded.ledger_sum::text)", clear_pending=False)}
        else t.resolution end""",
    # ``prior`` reads the same snapshot as the upsert: the drift before it, so only a changed drift is audited.
    ctes="""prior as (select p.id, p.drift from reconciler.tasks p
                where p.status in ('open', 'needs_review') and p.customer_id between :first and :last)""",
    extra=", (xmax = 0) as inserted, t.drift",
    audit_rows="""(select c.* from changed c left join prior p on p.id = c.id
                   where c.inserted or p.drift is distinct from c.drift) c"""))


def open_tasks_from_findings(conn: Connection, run_id: int, first_id: int, last_id: int) -> tuple[int, int]:
    """Open a task for each of the run's findings with ids in ``[first_id, last_id]``, or refresh the
    customer's unresolved task (drift, balances, cause, evidence, ``last_seen_run_id``); return
    ``(opened, updated)``. Running it again opens nothing new."""
    rows = conn.execute(_UPSERT_FROM_FINDINGS, {"run": run_id, "first": first_id, "last": last_id,
                                                "by": f"run {run_id}"}).all()
    opened = sum(1 for row in rows if row.inserted)
    return opened, len(rows) - opened


# ---- opened by the guard at the commit of a write around the core (reconciler.guard) -------------------------

#: A task keeps at most this many bypass writes as evidence, and the guard stops adding events at this many,
#: so a hot writer cannot grow one task without bound (every write stays in ``reconciler.bypass_writes``).
MAX_TASK_WRITERS = 20
MAX_TASK_EVENTS = 100

#: The PL/pgSQL statement the guard's commit check (``reconciler.guard_check_ledger``) runs when a write around
#: the core broke a customer's ledger: open the customer's task with ``source = 'bypass'``, the bypass rows as
#: evidence and an ``open`` event, or update its unresolved one with an ``update`` event (the same
#: one-unresolved-task rule). It reads the check's variables: ``new`` (the ``bypass_writes`` row), ``stored``
#: (the balance), ``total`` (the ledger sum; NULL when the check judged by the chain alone), ``ledger`` (the sum,
#: or the chain's last balance_after when only the chain broke), ``probable`` (the cause), ``writer`` (jsonb),
#: ``story`` (text) and ``ids`` (bigint[]), and sets ``task_id`` and ``task_event`` (the event it added). That
#: event is also appended to the audit chain, like every other transition's.
_BYPASS_UPDATE_EVENT = """jsonb_build_object(
            'at', now(), 'by', 'reconciler guard', 'action', 'update', 'from', t.status, 'to', t.status,
            'note', 'a write around the core changed the drift', 'run_id', null,
            'values', jsonb_build_object('old_drift', t.drift::text, 'drift', excluded.drift::text,
                                         'stored_balance', excluded.stored_balance::text,
                                         'ledger_sum', excluded.ledger_sum::text,
                                         'bypass_write_ids', to_jsonb(ids)))"""
BYPASS_TASK_UPSERT = f"""
insert into reconciler.tasks as t
    (customer_id, stored_balance, ledger_sum, drift, status, source, cause, evidence, resolution)
values (new.customer_id, stored, ledger, stored - ledger, 'open', 'bypass', probable,
        jsonb_build_object('check', 'bypass', 'bypass_write_ids', to_jsonb(ids),
                           'writers', jsonb_build_array(writer), 'summary', story,
                           'ledger_sum_is', case when stored <> total then 'the ledger sum'
                                                 else 'the chain''s last balance_after' end),
        jsonb_build_object('events', jsonb_build_array(jsonb_build_object(
            'at', now(), 'by', 'reconciler guard', 'action', 'open', 'from', null, 'to', 'open',
            'note', 'a write around the core broke the ledger', 'run_id', null,
            'values', jsonb_build_object('stored_balance', stored::text, 'ledger_sum', ledger::text,
                                         'drift', (stored - ledger)::text, 'cause', probable,
                                         'bypass_write_ids', to_jsonb(ids))))))
on conflict (customer_id) where status in ('open', 'needs_review') do update set
    stored_balance = excluded.stored_balance, ledger_sum = excluded.ledger_sum, drift = excluded.drift,
    updated_at = now(),
    evidence = case
        when jsonb_array_length(coalesce(t.evidence -> 'writers', '[]'::jsonb)) >= {MAX_TASK_WRITERS}
        then t.evidence  -- a hot writer: the rest is in reconciler.bypass_writes
        else coalesce(t.evidence, '{{}}'::jsonb) || jsonb_build_object(
            'bypass_write_ids', coalesce(t.evidence -> 'bypass_write_ids', '[]'::jsonb) || to_jsonb(ids),
            'writers', coalesce(t.evidence -> 'writers', '[]'::jsonb) || jsonb_build_array(writer)) end,
    resolution = case
        when jsonb_array_length(coalesce(t.resolution -> 'events', '[]'::jsonb)) >= {MAX_TASK_EVENTS}
        then t.resolution
        -- jsonb_insert appends in one pass over the task's history (jsonb_set(r, events, r -> events || e) takes three)
        when t.resolution -> 'events' is not null
        then jsonb_insert(t.resolution, '{{events,-1}}', {_BYPASS_UPDATE_EVENT}, true)
        else jsonb_set(coalesce(t.resolution, '{{}}'::jsonb), '{{events}}',
                       jsonb_build_array({_BYPASS_UPDATE_EVENT})) end
returning t.id, t.resolution -> 'events' -> -1 into task_id, task_event;
-- Its audit row (reconciler.audit), when the statement above added an event now (not when a hot writer's task is
-- at MAX_TASK_EVENTS and was left as it was): the event it returned, no second read of the task.
if task_event ->> 'by' = 'reconciler guard' and (task_event ->> 'at')::timestamptz = now() then
    perform reconciler.append_audit(jsonb_build_array(jsonb_build_object(
        'kind', 'task', 'actor', 'reconciler guard',
        'data', jsonb_build_object('task_id', task_id, 'customer_id', new.customer_id, 'event', task_event))));
end if;"""


_DISMISS_VANISHED = text(_audited(ctes="""current as (
    select t.id, c.balance,
           (select coalesce(sum(e.amount), 0) from customer_ledger_entries e where e.customer_id = t.customer_id)
               as total
    from reconciler.tasks t join customers c on c.id = t.customer_id
    where t.status in ('open', 'needs_review')
      and t.customer_id between :first and :last
      and (cast(:ids as bigint[]) is null or t.customer_id = any(cast(:ids as bigint[])))
      and t.resolution -> 'pending' is null
      and t.updated_at < :compared_at
      and not exists (select 1 from reconciler.findings f where f.run_id = :run and f.customer_id = t.customer_id)
)""", write=f"""
update reconciler.tasks t set
    status = 'dismissed', resolved_at = now(), updated_at = now(), last_seen_run_id = :run,
    resolution = {_event(by=":by", action="'dismiss'", to="'dismissed'", note=":note",
                         values="jsonb_build_object('balance', cur.balance::text, 'ledger_sum', cur.total::text, "
                                "'previous_drift', t.drift::text)")}
        || jsonb_build_object('action', 'dismiss', 'by', cast(:by as text), 'note', cast(:note as text), 'at', now(),
                              'run_id', cast(:run as bigint))
from current cur
where t.id = cur.id and t.status in ('open', 'needs_review') and abs(cur.balance - cur.total) <= :tolerance"""
)).bindparams(bindparam("ids", type_=ARRAY(BigInteger)))


def dismiss_vanished(conn: Connection, run_id: int, first_id: int, last_id: int, *, compared_at: dt.datetime,
                     tolerance: Decimal, customer_ids: Sequence[int] | None = None) -> list[int]:
    """Dismiss the unresolved tasks of customers this run checked in ``[first_id, last_id]`` and found clean,
    when they are still clean now (re-verified in this statement); return their ids.

    Tasks changed after the comparison, and tasks with a correction in flight, are left for the next run.
    """
    rows = conn.execute(_DISMISS_VANISHED, {
        "run": run_id, "first": first_id, "last": last_id, "compared_at": compared_at, "tolerance": tolerance,
        "ids": list(customer_ids) if customer_ids is not None else None, "by": f"run {run_id}",
        "note": f"drift vanished, seen clean in run {run_id}",
    }).all()
    return [int(row.id) for row in rows]


# ---- reading --------------------------------------------------------------------------------------------

def check_status(status: str, *, name: str = "status") -> str:
    if status not in TASK_STATUSES:
        raise InvalidOperationError(f"{name} must be one of {', '.join(TASK_STATUSES)}, got {status!r}")
    return status


def list_tasks(conn: Connection, status: str | None = None, run_id: int | None = None, *,
               limit: int | None = None) -> list[TaskView]:
    """Tasks, newest first; ``run_id`` selects those the run opened or last saw drifting."""
    query = select(tasks).order_by(tasks.c.id.desc())
    if status is not None:
        query = query.where(tasks.c.status == check_status(status))
    if run_id is not None:
        query = query.where((tasks.c.run_id == run_id) | (tasks.c.last_seen_run_id == run_id))
    if limit is not None:
        query = query.limit(limit)
    return [_view(row) for row in conn.execute(query).mappings()]


def count_tasks(conn: Connection, status: str | None = None, run_id: int | None = None) -> int:
    query = select(tasks.c.id)
    if status is not None:
        query = query.where(tasks.c.status == check_status(status))
    if run_id is not None:
        query = query.where((tasks.c.run_id == run_id) | (tasks.c.last_seen_run_id == run_id))
    return int(conn.execute(select(func.count()).select_from(query.subquery())).scalar_one())


def get_task(conn: Connection, task_id: int, *, for_update: bool = False) -> TaskView:
    query = select(tasks).where(tasks.c.id == task_id)
    if for_update:
        query = query.with_for_update()
    row = conn.execute(query).mappings().one_or_none()
    if row is None:
        raise TaskNotFoundError(f"task {task_id} does not exist; list tasks with `reconciler tasks list`")
    return _view(row)


def status_counts(conn: Connection, run_id: int) -> dict[str, int]:
    """How many of the tasks last seen drifting in ``run_id`` are in each status."""
    rows = conn.execute(text("""select status, count(*) from reconciler.tasks where last_seen_run_id = :run
                                group by status"""), {"run": run_id}).all()
    counts = dict.fromkeys(TASK_STATUSES, 0)
    counts.update({row[0]: int(row[1]) for row in rows})
    return counts


@dataclass(frozen=True)
class Candidate:
    """An unresolved task a run may correct (a needs_review one only once it is within the run's limit)."""

    task_id: int
    customer_id: int
    drift: Decimal
    status: str
    pending_policy: str | None  # set when an earlier correction was left in flight (replay it, same policy)


def correction_candidates(conn: Connection, run_id: int, *, after_id: int, limit: int) -> list[Candidate]:
    """A batch (keyset on id) of the unresolved tasks the run saw drifting, plus any task with a correction
    left in flight by an earlier run (it is replayed with the same idempotency key)."""
    rows = conn.execute(text("""
        select id, customer_id, drift, status, resolution -> 'pending' ->> 'policy' as pending_policy
        from reconciler.tasks
        where status in ('open', 'needs_review') and id > :after
          and (last_seen_run_id = :run or resolution -> 'pending' is not null)
        order by id limit :limit"""), {"run": run_id, "after": after_id, "limit": limit}).all()
    return [Candidate(int(r.id), int(r.customer_id), Decimal(r.drift), r.status, r.pending_policy) for r in rows]


# ---- transitions ----------------------------------------------------------------------------------------

_TRANSITION = text(_audited(f"""
update reconciler.tasks t set
    status = :to, updated_at = now(),
    resolved_at = case when cast(:to as text) in ('corrected', 'dismissed') then now() else null end,
    correction_entry_id = coalesce(cast(:entry_id as bigint), t.correction_entry_id),
    resolution = {_event()} || cast(:summary as jsonb)
where t.id = :task and t.status = any(cast(:allowed as text[]))""")).bindparams(
    bindparam("values", type_=JSONB), bindparam("summary", type_=JSONB))


def transition(conn: Connection, task_id: int, *, to: str, action: str, by: str, note: str | None,
               run_id: int | None = None, values: Mapping[str, object] | None = None,
               summary: Mapping[str, object] | None = None, entry_id: int | None = None,
               allowed: Sequence[str] = UNRESOLVED_STATUSES) -> bool:
    """Move a task to ``to`` when its status is one of ``allowed``, appending the event (and merging
    ``summary`` into ``resolution`` at top level); False when the task was not in an allowed status."""
    check_status(to)
    return conn.execute(_TRANSITION, {
        "task": task_id, "to": to, "action": action, "by": by, "note": note, "run": run_id,
        "values": dict(values or {}), "summary": dict(summary or {}), "entry_id": entry_id,
        "allowed": list(allowed),
    }).first() is not None


_EVENT_ONLY = text(_audited(f"""
update reconciler.tasks t set updated_at = now(), resolution = {_event(to="t.status")}
where t.id = :task""")).bindparams(bindparam("values", type_=JSONB))


def note_event(conn: Connection, task_id: int, *, action: str, by: str, note: str | None,
               run_id: int | None = None, values: Mapping[str, object] | None = None) -> None:
    """Append an event that changes no status (e.g. a deferred correction); also clears ``pending``."""
    conn.execute(_EVENT_ONLY, {"task": task_id, "action": action, "by": by, "note": note, "run": run_id,
                               "values": dict(values or {})})


_MARK_PENDING = text("""
update reconciler.tasks t set updated_at = now(),
    resolution = t.resolution || jsonb_build_object('pending', jsonb_build_object(
        'idempotency_key', cast(:key as text), 'policy', cast(:policy as text), 'by', cast(:by as text),
        'run_id', cast(:run as bigint), 'at', now()))
where t.id = :task and t.status in ('open', 'needs_review')
returning t.id
""")


def mark_pending(conn: Connection, task_id: int, *, policy: str, by: str, run_id: int | None) -> bool:
    """Record that a correction is about to go to the core (so a crash in between is replayed, not lost);
    False when the task is no longer unresolved."""
    return conn.execute(_MARK_PENDING, {"task": task_id, "key": correction_key(task_id), "policy": policy,
                                        "by": by, "run": run_id}).first() is not None


_MARK_MANY_PENDING = text("""
update reconciler.tasks t set updated_at = now(),
    resolution = t.resolution || jsonb_build_object('pending', jsonb_build_object(
        'idempotency_key', cast(:prefix as text) || t.id, 'policy', v.policy, 'by', cast(:by as text),
        'run_id', cast(:run as bigint), 'at', now()))
from (select unnest(cast(:ids as bigint[])) as id, unnest(cast(:policies as text[])) as policy) v
where t.id = v.id and t.status in ('open', 'needs_review')
returning t.id
""").bindparams(bindparam("ids", type_=ARRAY(BigInteger)))


def mark_many_pending(conn: Connection, items: Sequence[tuple[int, str]], *, by: str, run_id: int | None) -> set[int]:
    """:func:`mark_pending` for many ``(task_id, policy)`` in one statement; return the ids still unresolved."""
    if not items:
        return set()
    rows = conn.execute(_MARK_MANY_PENDING, {"ids": [task_id for task_id, _ in items], "prefix": KEY_PREFIX,
                                             "policies": [policy for _, policy in items], "by": by, "run": run_id})
    return {int(row.id) for row in rows}


_TRANSITION_MANY = _TRANSITION


def mark_many_needs_review(conn: Connection, reviews: Sequence[tuple[int, Decimal, str]], *, by: str,
                           run_id: int | None) -> None:
    """``open -> needs_review`` for many ``(task_id, drift, reason)`` in one batched statement (tasks that are
    no longer open are left as they are)."""
    if not reviews:
        return
    conn.execute(_TRANSITION_MANY, [
        {"task": task_id, "to": "needs_review", "action": "needs_review", "by": by, "note": reason, "run": run_id,
         "values": {"drift": str(drift)}, "summary": {}, "entry_id": None, "allowed": ["open"]}
        for task_id, drift, reason in reviews])


#: Outcomes that leave the task as it is and only append an event (the event's action); ``pending`` is cleared
#: so the next run decides afresh (``busy``: another session held the row lock). A new such outcome is one
#: entry here.
EVENT_ONLY_OUTCOMES: Mapping[str, str] = {"deferred": "defer", "busy": "busy"}
#: Outcomes that resolve the task: (status, event action).
RESOLVING_OUTCOMES: Mapping[str, tuple[str, str]] = {"corrected": ("corrected", "correct"),
                                                      "vanished": ("dismissed", "dismiss")}


def record_outcome(conn: Connection, task_id: int, *, outcome: str, by: str, note: str | None,
                   reason: str, run_id: int | None, values: Mapping[str, object],
                   entry_id: int | None = None) -> bool:
    """Write a correction's outcome on its task: ``corrected`` (the core changed the balance), ``vanished``
    (dismissed: nothing to correct), or an event-only outcome such as ``deferred`` (the task stays as it is).
    False when the task was not unresolved any more (or the outcome resolves nothing)."""
    if outcome in EVENT_ONLY_OUTCOMES:
        note_event(conn, task_id, action=EVENT_ONLY_OUTCOMES[outcome], by=by, note=reason, run_id=run_id,
                   values=values)
        return False
    if outcome not in RESOLVING_OUTCOMES:
        raise InvalidOperationError(
            f"outcome must be one of {', '.join([*RESOLVING_OUTCOMES, *EVENT_ONLY_OUTCOMES])}, got {outcome!r}")
    status, action = RESOLVING_OUTCOMES[outcome]
    summary: dict[str, object] = {**values, "by": by, "note": note, "run_id": run_id, "reason": reason,
                                  "action": action}
    return transition(conn, task_id, to=status, action=action, by=by,
                      note=(note or reason) if outcome == "corrected" else reason, run_id=run_id, values=values,
                      summary=summary, entry_id=entry_id if outcome == "corrected" else None)


def dismiss_by_hand(conn: Connection, task_id: int, *, by: str, note: str, drift: Decimal) -> bool:
    """A person dismisses an unresolved task (who and why in the event and the summary)."""
    return transition(conn, task_id, to="dismissed", action="dismiss", by=by, note=note,
                      values={"drift": str(drift)},
                      summary={"action": "dismiss", "by": by, "note": note, "drift": str(drift)})


_DISMISS_IF_CLEAN = text(_audited(ctes="""cur as (
    select t.id, c.balance,
           (select coalesce(sum(e.amount), 0) from customer_ledger_entries e where e.customer_id = t.customer_id)
               as total
    from reconciler.tasks t join customers c on c.id = t.customer_id
    where t.id = :task and t.status in ('open', 'needs_review')
)""", write=f"""
update reconciler.tasks t set
    status = 'dismissed', resolved_at = now(), updated_at = now(),
    resolution = {_event(by=":by", action="'dismiss'", to="'dismissed'", note=":note",
                         values="jsonb_build_object('balance', cur.balance::text, 'ledger_sum', cur.total::text, "
                                "'previous_drift', t.drift::text)")}
        || jsonb_build_object('action', 'dismiss', 'by', cast(:by as text), 'note', cast(:note as text), 'at', now(),
                              'run_id', cast(:run as bigint), 'reason', cast(:note as text))
from cur
where t.id = cur.id and abs(cur.balance - cur.total) <= :tolerance"""))


def dismiss_if_clean(conn: Connection, task_id: int, *, tolerance: Decimal, by: str, note: str,
                     run_id: int | None) -> bool:
    """Dismiss an unresolved task when its customer is clean NOW (re-verified in this one statement); False
    when it drifts again or is no longer unresolved (then nothing is written)."""
    return conn.execute(_DISMISS_IF_CLEAN, {"task": task_id, "tolerance": tolerance, "by": by, "note": note,
                                            "run": run_id}).first() is not None


# ---- the balance core's realtime check ------------------------------------------------------------------

_OPEN_REALTIME_TASK = text(_audited("""
insert into reconciler.tasks as t (customer_id, stored_balance, ledger_sum, drift, status, source, cause, evidence,
                                   resolution)
values (cast(:customer_id as bigint), cast(:stored_balance as numeric), cast(:ledger_sum as numeric),
        cast(:drift as numeric), 'open', 'realtime', cast(:cause as text), cast(:evidence as jsonb),
        jsonb_build_object('events', jsonb_build_array(jsonb_build_object(
            'at', now(), 'by', cast(:by as text), 'action', 'open', 'from', null, 'to', 'open',
            'note', cast(:note as text), 'run_id', null, 'values', jsonb_build_object(
                'stored_balance', cast(:stored_balance as numeric)::text,
                'ledger_sum', cast(:ledger_sum as numeric)::text,
                'drift', cast(:drift as numeric)::text, 'cause', cast(:cause as text))))))
on conflict (customer_id) where status in ('open', 'needs_review') do nothing"""))

#: Who opens a realtime task, as its opening event says.
REALTIME_OPENED_BY = "balance core (realtime check)"


def open_realtime_task(conn: Connection, customer_id: int, *, stored_balance: Decimal, ledger_sum: Decimal,
                       drift: Decimal, cause: str, evidence: Mapping[str, object]) -> int | None:
    """Open a ``realtime`` task with its opening event, on the caller's connection and in its transaction
    (the balance core calls this while it holds the customer's row lock); None when the customer already has
    an unresolved task (it is kept as it is)."""
    opened = conn.execute(_OPEN_REALTIME_TASK, {
        "customer_id": customer_id, "stored_balance": stored_balance, "ledger_sum": ledger_sum, "drift": drift,
        "cause": cause, "evidence": json.dumps(dict(evidence), default=str, sort_keys=True),
        "by": REALTIME_OPENED_BY, "note": "balance before a change is off the balance_after chain",
    }).scalar_one_or_none()
    return None if opened is None else int(opened)


def run_task_counts(conn: Connection, run_id: int) -> dict[str, int]:
    """How many tasks ``run_id`` opened, updated (seen drifting again) and dismissed (seen clean)."""
    row = conn.execute(text("""
        select count(*) filter (where t.run_id = :run) as opened,
               count(*) filter (where t.run_id is distinct from :run
                                and exists (select 1 from reconciler.findings f
                                            where f.run_id = :run and f.customer_id = t.customer_id)) as updated,
               count(*) filter (where t.status = 'dismissed'
                                and not exists (select 1 from reconciler.findings f
                                                where f.run_id = :run and f.customer_id = t.customer_id))
                   as dismissed
        from reconciler.tasks t where t.last_seen_run_id = :run"""), {"run": run_id}).one()
    return {"opened": int(row.opened), "updated": int(row.updated), "dismissed": int(row.dismissed)}


def busy_streak(events: Sequence[Mapping[str, Any]]) -> int:
    """How many runs in a row, up to the latest event, found the task's customer locked (pure).

    Counts the trailing ``busy`` events of distinct runs; events of other kinds by the same runs (e.g.
    ``seen``) do not break the streak, any other run's event does."""
    runs: list[object] = []
    for event in reversed(events):
        if event.get("action") == "busy":
            if event.get("run_id") not in runs:
                runs.append(event.get("run_id"))
        elif event.get("run_id") not in runs or event.get("run_id") is None:
            break
    return len(runs)


_BUSY_EVENTS = text("""
select t.id, t.customer_id, t.resolution -> 'events' as events from reconciler.tasks t
where t.id = any(cast(:ids as bigint[]))""").bindparams(bindparam("ids", type_=ARRAY(BigInteger)))


def busy_streaks(conn: Connection, task_ids: Sequence[int]) -> dict[int, int]:
    """:func:`busy_streak` of each task, by task id."""
    if not task_ids:
        return {}
    rows = conn.execute(_BUSY_EVENTS, {"ids": list(task_ids)}).all()
    return {int(row.id): busy_streak(row.events or []) for row in rows}


def describe(task: TaskView) -> str:
    """One line for people: customer, drift, status, cause."""
    cause = f", probable cause {task.cause}" if task.cause else ""
    return (f"task {task.id}: customer {task.customer_id} drift {format_money(task.drift)} (balance "
            f"{format_money(task.stored_balance)}, ledger {format_money(task.ledger_sum)}), {task.status}{cause}")
