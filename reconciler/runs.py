"""Run rows in ``reconciler.runs``: start, heartbeat, outcome, finish, fail; and finding dead runs.

Invariant: a run that stopped without finishing (killed, connection lost) does not stay ``running``: the
next run's start marks it ``failed`` with the reason. A run started in one process holds a session-level
PostgreSQL advisory lock on its own connection for its whole life (``outcome.session_lock``); when that
process dies, PostgreSQL drops the lock with the session, so the death is seen at once, not after a
timeout. Runs driven step by step (Airflow, one process per step) hold no lock and are judged by their
heartbeat age instead (:data:`DEFAULT_STALE_AFTER`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import Connection, RowMapping, bindparam, func, select, text, update
from sqlalchemy.dialects.postgresql import JSONB, insert

from reconciler.errors import InvalidOperationError, RunNotFoundError, RunStateError
from reconciler.schema import RUN_TRIGGERS, run_chunks, runs

#: A lock-less run whose heartbeat is older than this is taken for dead.
DEFAULT_STALE_AFTER = dt.timedelta(minutes=10)
#: First key of the two-key advisory lock a live run holds (second key: the run id); "RECR".
RUN_LOCK_NAMESPACE = 0x5245_4352
_INT4 = 2_147_483_647


@dataclass(frozen=True)
class Totals:
    """What a run's chunks found so far."""

    chunks: int
    compared_chunks: int
    customers_checked: int
    drift_count: int
    total_abs_drift: Decimal


@dataclass(frozen=True)
class AbandonedRun:
    """A run found dead by another run's start, and why."""

    run_id: int
    reason: str


def check_trigger(trigger: str) -> str:
    if trigger not in RUN_TRIGGERS:
        raise InvalidOperationError(f"trigger must be one of {', '.join(RUN_TRIGGERS)}, got {trigger!r}")
    return trigger


def _lock_key(run_id: int) -> int:
    return run_id % _INT4


def insert_run(conn: Connection, params: Mapping[str, object], trigger: str, *, session_lock: bool,
               key: str | None = None) -> int:
    """Insert a ``running`` run; with ``session_lock`` this connection also takes the run's advisory lock
    (before commit, so no other session ever sees the row without its lock held). With ``key``, a running
    run that has the same key is returned instead (a retried start step starts nothing new)."""
    check_trigger(trigger)
    values = insert(runs).values(status="running", trigger=trigger, params=dict(params),
                                 outcome={"session_lock": session_lock}, run_key=key)
    if key is not None:
        values = values.on_conflict_do_nothing(
            index_elements=[runs.c.run_key],
            index_where=(runs.c.status == "running") & runs.c.run_key.is_not(None))
    inserted = conn.execute(values.returning(runs.c.id)).scalar()
    if inserted is None:  # only with a key: that run is already running
        return int(conn.execute(
            select(runs.c.id).where(runs.c.run_key == key, runs.c.status == "running")).scalar_one())
    run_id = int(inserted)
    if session_lock:
        conn.execute(text("select pg_advisory_lock(:ns, :key)"), {"ns": RUN_LOCK_NAMESPACE, "key": _lock_key(run_id)})
    return run_id


def release_lock(conn: Connection, run_id: int) -> None:
    """Release the run's session advisory lock taken by :func:`insert_run` on this connection."""
    conn.execute(text("select pg_advisory_unlock(:ns, :key)"), {"ns": RUN_LOCK_NAMESPACE, "key": _lock_key(run_id)})


def fail_abandoned_runs(conn: Connection, *, stale_after: dt.timedelta = DEFAULT_STALE_AFTER,
                        by_run_id: int | None = None) -> list[AbandonedRun]:
    """Mark ``failed`` every ``running`` run whose process is gone; return them with the reasons.

    A run with a session lock is dead when its lock is free (its session ended); a run without one is dead
    when its heartbeat is older than ``stale_after``.
    """
    query = (
        select(runs.c.id, runs.c.heartbeat_at, runs.c.outcome["session_lock"].as_boolean().label("session_lock"),
               (func.now() - runs.c.heartbeat_at).label("age"))
        .where(runs.c.status == "running")
        .order_by(runs.c.id)
    )
    if by_run_id is not None:  # never itself: its own session holds its lock, and advisory locks are re-entrant
        query = query.where(runs.c.id != by_run_id)
    rows = conn.execute(query).all()
    found: list[AbandonedRun] = []
    by = f" by run {by_run_id}" if by_run_id is not None else ""
    for row in rows:
        if row.session_lock:
            free = conn.execute(text("select pg_try_advisory_xact_lock(:ns, :key)"),
                                {"ns": RUN_LOCK_NAMESPACE, "key": _lock_key(row.id)}).scalar_one()
            if not free:
                continue
            reason = (f"abandoned: its process or database session ended while running (last heartbeat "
                      f"{row.heartbeat_at:%Y-%m-%d %H:%M:%S%z}); marked failed{by}. Its staged findings are kept; "
                      f"a new run redoes the work without duplicates")
        elif row.age > stale_after:
            reason = (f"abandoned: no heartbeat since {row.heartbeat_at:%Y-%m-%d %H:%M:%S%z} (more than "
                      f"{int(stale_after.total_seconds())} s); marked failed{by}. A new run redoes the work "
                      f"without duplicates")
        else:
            continue
        done = conn.execute(
            update(runs).where(runs.c.id == row.id, runs.c.status == "running")
            .values(status="failed", finished_at=func.now(), error=reason)
        ).rowcount
        if done:
            found.append(AbandonedRun(int(row.id), reason))
    return found


def heartbeat(conn: Connection, run_id: int, *, min_interval: dt.timedelta | None = None) -> None:
    """Record that the run is alive; with ``min_interval`` skip when the last beat is more recent."""
    statement = update(runs).where(runs.c.id == run_id, runs.c.status == "running").values(heartbeat_at=func.now())
    if min_interval is not None:
        statement = statement.where(runs.c.heartbeat_at < func.now() - min_interval)
    conn.execute(statement)


def merge_outcome(conn: Connection, run_id: int, patch: Mapping[str, object]) -> None:
    """Merge ``patch`` (JSON-able) into the run's ``outcome`` (top-level keys replaced)."""
    conn.execute(
        update(runs).where(runs.c.id == run_id)
        .values(outcome=runs.c.outcome.op("||", return_type=JSONB)(bindparam("patch", dict(patch), type_=JSONB)))
    )


def get_run(conn: Connection, run_id: int, *, for_update: bool = False) -> RowMapping:
    """The run's row, or :class:`RunNotFoundError`."""
    statement = select(runs).where(runs.c.id == run_id)
    if for_update:
        statement = statement.with_for_update()
    row = conn.execute(statement).mappings().one_or_none()
    if row is None:
        raise RunNotFoundError(f"run {run_id} does not exist; list runs with `reconciler tasks list` or start one "
                               f"with `reconciler run`")
    return row


def require_running(conn: Connection, run_id: int) -> RowMapping:
    """The run's row when it is still ``running``, else :class:`RunStateError` (a dead run does nothing more)."""
    row = get_run(conn, run_id)
    if row["status"] != "running":
        raise RunStateError(
            f"run {run_id} is {row['status']}, not running"
            + (f" ({row['error']})" if row["error"] else "")
            + "; start a new run instead of continuing this one"
        )
    return row


def tally(conn: Connection, run_id: int) -> Totals:
    """Totals over the run's chunks and staged findings, computed in SQL."""
    chunk_row = conn.execute(
        select(func.count(), func.count().filter(run_chunks.c.status == "compared"),
               func.coalesce(func.sum(run_chunks.c.customers_checked), 0))
        .where(run_chunks.c.run_id == run_id)
    ).one()
    finding_row = conn.execute(
        text("select count(*), coalesce(sum(abs(drift)), 0) from reconciler.findings where run_id = :run"),
        {"run": run_id},
    ).one()
    return Totals(chunks=int(chunk_row[0]), compared_chunks=int(chunk_row[1]), customers_checked=int(chunk_row[2]),
                  drift_count=int(finding_row[0]), total_abs_drift=Decimal(finding_row[1]))


def store_totals(conn: Connection, run_id: int, totals: Totals) -> None:
    conn.execute(update(runs).where(runs.c.id == run_id).values(
        customers_checked=totals.customers_checked, drift_count=totals.drift_count,
        total_abs_drift=totals.total_abs_drift, chunk_count=totals.chunks))


def finish(conn: Connection, run_id: int, status: str, totals: Totals) -> None:
    """Close a running run with its final status and totals."""
    assert status in ("succeeded", "halted")
    conn.execute(update(runs).where(runs.c.id == run_id, runs.c.status == "running").values(
        status=status, finished_at=func.now(), heartbeat_at=func.now(), customers_checked=totals.customers_checked,
        drift_count=totals.drift_count, total_abs_drift=totals.total_abs_drift, chunk_count=totals.chunks))


def mark_failed(conn: Connection, run_id: int, reason: str) -> bool:
    """Mark a running run ``failed`` with ``reason``; False when it was not running any more."""
    return bool(conn.execute(
        update(runs).where(runs.c.id == run_id, runs.c.status == "running")
        .values(status="failed", finished_at=func.now(), error=reason[:4000])
    ).rowcount)


def record_mode(conn: Connection, run_id: int, mode: str, reason: str, *, verified_from: str | None) -> None:
    """The mode the planner chose for the run, why, and the verified point it starts from (incremental)."""
    conn.execute(update(runs).where(runs.c.id == run_id).values(mode=mode, mode_reason=reason,
                                                                verified_from=verified_from))


def record_verified(conn: Connection, run_id: int, verified_to: str) -> None:
    """The verified point the finished run reached (its snapshot)."""
    conn.execute(update(runs).where(runs.c.id == run_id).values(verified_to=verified_to))
