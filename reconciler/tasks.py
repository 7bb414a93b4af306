"""Reconciliation tasks: at most one unresolved task per customer, and an audit trail of every transition.

Invariants: a rerun updates the customer's unresolved task, never opens a second one (the database's
partial unique index ``ux_tasks_one_unresolved_per_customer`` backs this up); the lifecycle is
``open -> needs_review -> corrected | dismissed`` (``open`` may go straight to ``corrected`` or
``dismissed``); a resolved task never changes again; every transition appends an event
``{at, by, action, from, to, note, run_id, values}`` to ``resolution.events``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine, RowMapping, bindparam, func, select, text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.types import BigInteger

from reconciler.corrections import (
    DEFAULT_POLICY,
    KEY_PREFIX,
    CorrectionResult,
    Outcome,
    TaskRef,
    apply_correction,
    check_policy,
    correction_engine,
    correction_key,
)
from reconciler.errors import InvalidOperationError, TaskNotFoundError, TaskStateError
from reconciler.money import format_money
from reconciler.schema import TASK_STATUSES, UNRESOLVED_STATUSES, tasks

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

_UPSERT_FROM_FINDINGS = text(f"""
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
        else t.resolution end
returning (xmax = 0) as inserted
""")


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
#: (the balance), ``total`` (the ledger sum), ``ledger`` (the sum, or the chain's last balance_after when only the
#: chain broke), ``probable`` (the cause), ``writer`` (jsonb), ``story`` (text) and ``ids`` (bigint[]).
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
        else jsonb_set(t.resolution, '{{events}}', coalesce(t.resolution -> 'events', '[]'::jsonb)
        || jsonb_build_array(jsonb_build_object(
            'at', now(), 'by', 'reconciler guard', 'action', 'update', 'from', t.status, 'to', t.status,
            'note', 'a write around the core changed the drift', 'run_id', null,
            'values', jsonb_build_object('old_drift', t.drift::text, 'drift', excluded.drift::text,
                                         'stored_balance', excluded.stored_balance::text,
                                         'ledger_sum', excluded.ledger_sum::text,
                                         'bypass_write_ids', to_jsonb(ids))))) end;"""


_DISMISS_VANISHED = text(f"""
with current as (
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
)
update reconciler.tasks t set
    status = 'dismissed', resolved_at = now(), updated_at = now(), last_seen_run_id = :run,
    resolution = {_event(by=":by", action="'dismiss'", to="'dismissed'", note=":note",
                         values="jsonb_build_object('balance', cur.balance::text, 'ledger_sum', cur.total::text, "
                                "'previous_drift', t.drift::text)")}
        || jsonb_build_object('action', 'dismiss', 'by', cast(:by as text), 'note', cast(:note as text), 'at', now(),
                              'run_id', cast(:run as bigint))
from current cur
where t.id = cur.id and t.status in ('open', 'needs_review') and abs(cur.balance - cur.total) <= :tolerance
returning t.id
""").bindparams(bindparam("ids", type_=ARRAY(BigInteger)))


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

_TRANSITION = text(f"""
update reconciler.tasks t set
    status = :to, updated_at = now(),
    resolved_at = case when cast(:to as text) in ('corrected', 'dismissed') then now() else null end,
    correction_entry_id = coalesce(cast(:entry_id as bigint), t.correction_entry_id),
    resolution = {_event()} || cast(:summary as jsonb)
where t.id = :task and t.status = any(cast(:allowed as text[]))
returning t.id
""").bindparams(bindparam("values", type_=JSONB), bindparam("summary", type_=JSONB))


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


_EVENT_ONLY = text(f"""
update reconciler.tasks t set updated_at = now(), resolution = {_event(to="t.status")}
where t.id = :task returning t.id
""").bindparams(bindparam("values", type_=JSONB))


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


_TRANSITION_MANY = text(str(_TRANSITION.text).replace("returning t.id", "")).bindparams(
    bindparam("values", type_=JSONB), bindparam("summary", type_=JSONB))


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


def record_correction(conn: Connection, result: CorrectionResult, *, by: str, note: str | None,
                      approved_by: str | None = None) -> bool:
    """Write the outcome of :func:`reconciler.corrections.apply_correction` on its task."""
    task = result.task
    values = result.values()
    if approved_by is not None:
        values["approved_by"] = approved_by
    if result.outcome in (Outcome.DEFERRED, Outcome.BUSY):  # nothing written: the task stays open for next time
        action = "busy" if result.outcome is Outcome.BUSY else "defer"
        note_event(conn, task.task_id, action=action, by=by, note=result.reason, run_id=task.run_id, values=values)
        return False
    summary: dict[str, object] = {**values, "by": by, "note": note, "run_id": task.run_id,
                                  "reason": result.reason}
    if result.outcome is Outcome.CORRECTED:
        summary["action"] = "correct"
        rec = result.reconciliation
        return transition(conn, task.task_id, to="corrected", action="correct", by=by,
                          note=note or result.reason, run_id=task.run_id, values=values, summary=summary,
                          entry_id=rec.entry_id if rec is not None else None)
    summary["action"] = "dismiss"
    return transition(conn, task.task_id, to="dismissed", action="dismiss", by=by, note=result.reason,
                      run_id=task.run_id, values=values, summary=summary)


def correct_task(engine: Engine, manager: Any, task: TaskRef, *, policy: str, tolerance: Decimal, by: str,
                 note: str | None = None, approved_by: str | None = None) -> CorrectionResult | None:
    """Correct one task through the core and record the outcome; None when the task was already resolved."""
    with engine.begin() as conn:
        if not mark_pending(conn, task.task_id, policy=policy, by=by, run_id=task.run_id):
            return None
    result = apply_correction(manager, task, policy=policy, tolerance=tolerance,
                              audit={"by": by, "approved_by": approved_by})
    with engine.begin() as conn:
        record_correction(conn, result, by=by, note=note, approved_by=approved_by)
    return result


# ---- resolving by hand (the CLI) ------------------------------------------------------------------------

@dataclass(frozen=True)
class Resolved:
    """What ``resolve_task`` did: the task after, and the correction when there was one."""

    task: TaskView
    correction: CorrectionResult | None


def _required_text(value: str, name: str) -> str:
    cleaned = value.strip() if isinstance(value, str) else ""
    if not cleaned:
        raise InvalidOperationError(f"{name} must be a non-empty text (who approves, and why), got {value!r}")
    return cleaned


def resolve_task(engine: Engine, task_id: int, action: str, by: str, note: str,
                 policy: str = DEFAULT_POLICY, *, tolerance: Decimal = Decimal("0.01")) -> Resolved:
    """Resolve an unresolved task by hand: ``dismiss`` closes it; ``correct`` corrects it through the core
    (re-verified under the row lock; no auto_correct_limit: a person approved it, recorded as ``approved_by``
    with the note). A correction an earlier run left in flight is completed with that run's policy. A
    resolved task raises :class:`TaskStateError`; a lock timeout leaves the task as it was (try again)."""
    if action not in ACTIONS:
        raise InvalidOperationError(f"action must be one of {', '.join(ACTIONS)}, got {action!r}")
    by = _required_text(by, "by")
    note = _required_text(note, "note")
    check_policy(policy)
    with engine.begin() as conn:
        current = get_task(conn, task_id, for_update=True)
        if not current.unresolved:
            raise TaskStateError(
                f"task {task_id} is already {current.status} (at {current.resolved_at:%Y-%m-%d %H:%M:%S%z}); "
                f"a resolved task never changes. A new drift of customer {current.customer_id} opens a new task"
            )
        if action == "dismiss":
            transition(conn, task_id, to="dismissed", action="dismiss", by=by, note=note,
                       values={"drift": str(current.drift)},
                       summary={"action": "dismiss", "by": by, "note": note, "drift": str(current.drift)})
    correction: CorrectionResult | None = None
    if action == "correct":
        from reconciler.balances import BalanceManager  # noqa: PLC0415  (written by the balance core)

        pending = current.resolution.get("pending")
        if isinstance(pending, Mapping) and pending.get("policy") in ("ledger", "balance"):
            policy = str(pending["policy"])  # a correction left in flight is completed as it was started
        with correction_engine(engine, pool_size=1) as safe_engine:
            manager = BalanceManager(safe_engine)
            correction = correct_task(engine, manager, TaskRef(task_id, current.customer_id, None), policy=policy,
                                      tolerance=tolerance, by=by, note=note, approved_by=by)
        if correction is None:
            with engine.connect() as conn:
                latest = get_task(conn, task_id)
            raise TaskStateError(f"task {task_id} was resolved by someone else meanwhile (now {latest.status})")
    with engine.connect() as conn:
        return Resolved(get_task(conn, task_id), correction)


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
