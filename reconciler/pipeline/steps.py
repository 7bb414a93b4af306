"""The run's steps, each retryable on its own: start, plan, compare a chunk, quality, open tasks, report, finish.

Invariant: every step keeps all its state in the database and can be retried or rerun with the same result
(steps take and return only ids, bounds and counts): a compared chunk is not compared again, findings are
staged keyed ``(run_id, customer_id)``, tasks are upserted per customer. Each table is written by its own
module (:mod:`reconciler.runs`, :mod:`reconciler.run_chunks`, :mod:`reconciler.findings`,
:mod:`reconciler.tasks`); the corrections step is :mod:`.correct`.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, RowMapping, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.types import BigInteger

from reconciler import findings as finding_store
from reconciler import run_chunks as chunk_store
from reconciler import runs, tasks
from reconciler.chunks import Chunk
from reconciler.compare import ChunkComparison, compare_chunk_totals
from reconciler.corrections import (
    DEFAULT_STATEMENT_TIMEOUT,
)
from reconciler.db import describe_url, reading
from reconciler.errors import (
    CustomerNotFoundError,
    ReadDatabaseLagError,
    RunStateError,
)
from reconciler.explain import Explanation, explain_drifts
from reconciler.money import ZERO
from reconciler.quality_worker import QualityWorker

from .incremental import plan_scope, verify_snapshot
from .options import RunOptions
from .summary import RunSummary, _summary

#: reconciler's own tables, never a row a payment needs.
DEFAULT_STEP_LOCK_TIMEOUT = dt.timedelta(seconds=30)
#: Tasks are opened and dismissed for at most this many planned customers per transaction.
TASK_SPAN_CUSTOMERS = 100_000
#: Steps heartbeat at most this often.
HEARTBEAT_INTERVAL = dt.timedelta(seconds=5)

log = logging.getLogger("reconciler.pipeline")


def _millis(value: dt.timedelta) -> str:
    return str(max(1, int(value.total_seconds() * 1000)))


def _local_timeouts(conn: Connection, *, lock_timeout: dt.timedelta = DEFAULT_STEP_LOCK_TIMEOUT) -> None:
    """Bound this transaction's statements and lock waits (``SET LOCAL``: gone at commit)."""
    conn.execute(text("select set_config('statement_timeout', :st, true), set_config('lock_timeout', :lt, true)"),
                 {"st": _millis(DEFAULT_STATEMENT_TIMEOUT), "lt": _millis(lock_timeout)})


def _options(row: RowMapping) -> RunOptions:
    return RunOptions.from_params(row["params"] or {})


def _check_customers_exist(conn: Connection, options: RunOptions) -> None:
    if options.customer_ids is None:
        return
    missing = conn.execute(
        text("""select id from unnest(cast(:ids as bigint[])) as wanted(id)
                where not exists (select 1 from customers c where c.id = wanted.id) order by id limit 10""")
        .bindparams(bindparam("ids", type_=ARRAY(BigInteger))),
        {"ids": list(options.customer_ids)},
    ).scalars().all()
    if missing:
        raise CustomerNotFoundError(
            f"customer_ids: {', '.join(map(str, missing))} {'does' if len(missing) == 1 else 'do'} not exist in "
            f"customers; check the ids (nothing was run)")


def _begin_run(conn: Connection, options: RunOptions, trigger: str, *, session_lock: bool,
               key: str | None = None) -> int:
    _local_timeouts(conn)
    _check_customers_exist(conn, options)
    run_id = runs.insert_run(conn, options.to_params(), trigger, session_lock=session_lock, key=key)
    abandoned = runs.fail_abandoned_runs(conn, by_run_id=run_id)
    if abandoned:
        runs.merge_outcome(conn, run_id, {"abandoned_runs": [{"run_id": a.run_id, "reason": a.reason}
                                                              for a in abandoned]})
    return run_id


def start_run(engine: Engine, options: RunOptions, trigger: str, *, key: str | None = None) -> int:
    """Insert a ``running`` run with its params and trigger; first marks dead runs ``failed``.

    Unknown ``customer_ids`` raise :class:`CustomerNotFoundError` and nothing is written. A run started
    here (step by step, e.g. by an orchestrator) holds no session lock: it is judged dead by heartbeat age.
    ``key`` (e.g. the orchestrator's run id) makes a retry of this step return the run it already started
    while that run is running; once it has failed, the same key starts a new run.
    """
    with engine.begin() as conn:
        return _begin_run(conn, options, trigger, session_lock=False, key=key)


def heartbeat(engine: Engine, run_id: int) -> None:
    """Record that the run is alive."""
    with engine.begin() as conn:
        runs.heartbeat(conn, run_id)


def mark_run_failed(engine: Engine, run_id: int, reason: str) -> None:
    """Mark a running run ``failed`` with ``reason`` (a no-op when it already finished)."""
    with engine.begin() as conn:
        runs.mark_failed(conn, run_id, reason)


def _chunk_dict(row: Any) -> dict[str, int]:
    return {"run_id": int(row.run_id), "chunk_index": int(row.chunk_index), "first_id": int(row.first_id),
            "last_id": int(row.last_id), "customers": int(row.planned_customers)}


def plan_run(engine: Engine, run_id: int, *, read_engine: Engine | None = None) -> list[dict[str, int]]:
    """Plan the run's chunks (stored in ``run_chunks``); a second call returns the stored plan.

    The run's mode is decided here and recorded with its reason (:func:`.incremental.plan_scope`): an
    incremental run's chunks hold only the customers touched since the verified point; the snapshot the run
    will verify is taken on ``read_engine`` when comparisons read there."""
    with engine.begin() as conn:
        _local_timeouts(conn)
        runs.require_running(conn, run_id)
        row = runs.get_run(conn, run_id, for_update=True)  # one planner at a time
        stored = chunk_store.stored_plan(conn, run_id)
        if stored:
            return [_chunk_dict(r) for r in stored]
        options = _options(row)
        planned, chunk_ids = plan_scope(conn, read_engine or engine, run_id, options)
        chunk_store.store_plan(conn, run_id, planned, chunk_ids)
        runs.store_totals(conn, run_id, runs.Totals(len(planned), 0, 0, 0, ZERO))
        return [{"run_id": run_id, "chunk_index": c.index, "first_id": c.first_id, "last_id": c.last_id,
                 "customers": c.customers} for c in planned]


def _find_drifts(conn: Connection, chunk: Chunk, options: RunOptions,
                 customer_ids: Sequence[int] | None = None) -> tuple[ChunkComparison, dict[int, Explanation]]:
    compared = compare_chunk_totals(conn, chunk, options.tolerance,
                                    customer_ids=customer_ids if customer_ids is not None else options.customer_ids)
    return compared, (explain_drifts(conn, compared.drifts) if compared.drifts else {})


def _compare(engine: Engine, run_id: int, chunk_index: int, options: RunOptions,
             read_engine: Engine | None = None) -> dict[str, int]:
    with engine.begin() as conn:
        _local_timeouts(conn)
        runs.require_running(conn, run_id)
        row = chunk_store.lock_chunk(conn, run_id, chunk_index)
        if row is None:
            raise RunStateError(f"run {run_id} has no chunk {chunk_index}; plan the run first (plan_run)")
        if row.status == "compared":
            return {"chunk_index": chunk_index, "customers_checked": int(row.customers_checked),
                    "drift_count": int(row.drift_count)}
        chunk = Chunk(index=chunk_index, first_id=int(row.first_id), last_id=int(row.last_id),
                      customers=int(row.planned_customers))
        ids = list(row.customer_ids) if row.customer_ids is not None else None  # an incremental chunk
        # Read-only work on its own READ ONLY transaction (one snapshot for compare and explain), on the read
        # URL when there is one. A replica may lag: that can delay a finding, never cause a wrong write, because
        # every correction re-verifies on the primary under the row lock.
        with reading(read_engine or engine) as reader:
            _local_timeouts(reader)
            compared, explanations = _find_drifts(reader, chunk, options, ids)
        drifts = compared.drifts
        finding_store.stage_findings(conn, run_id, chunk_index, drifts, explanations)
        chunk_store.mark_compared(conn, run_id, chunk, len(drifts), compared)
        return {"chunk_index": chunk_index, "customers_checked": chunk.customers, "drift_count": len(drifts)}


def compare_run_chunk(engine: Engine, run_id: int, chunk_index: int, *,
                      read_engine: Engine | None = None) -> dict[str, int]:
    """Compare one planned chunk (one SQL statement), explain its drifts and stage them as findings; a
    chunk already compared is returned as stored (a retry changes nothing). With ``read_engine`` (a read
    replica) the comparison reads there; the findings are staged on ``engine``, the primary."""
    with engine.connect() as conn:
        options = _options(runs.get_run(conn, run_id))
    result = _compare(engine, run_id, chunk_index, options, read_engine)
    with engine.begin() as conn:
        runs.heartbeat(conn, run_id, min_interval=HEARTBEAT_INTERVAL)
    return result


def check_quality(engine: Engine, run_id: int, *, read_engine: Engine | None = None,
                  worker: QualityWorker | None = None) -> dict[str, object]:
    """Run the expectation suites on the run (:func:`reconciler.quality.check_run_quality`), reading on
    ``read_engine`` when given (read only either way); the outcome is recorded on the run and returned. With
    ``worker`` (:mod:`reconciler.quality_worker`, started when the run began so GX was imported beside the
    comparison) the child runs them; if it cannot, this process does."""
    with engine.connect() as conn:
        runs.require_running(conn, run_id)
    answered = worker.check(run_id) if worker is not None else None
    if answered is not None:
        docs = answered.get("data_docs_path")
        quality: dict[str, object] = {"evaluated": int(answered["evaluated"]), "failed": int(answered["failed"]),
                                      "warnings": int(answered["warnings"]), "success": bool(answered["success"]),
                                      "data_docs_path": docs}
    else:
        from reconciler.quality import check_run_quality  # noqa: PLC0415  (Great Expectations is heavy)

        if read_engine is not None:
            wait_for_read_side(engine, read_engine, run_id)
        result = check_run_quality(engine, run_id, read_engine=read_engine)
        found_docs = getattr(result, "data_docs_path", None)
        quality = {"evaluated": int(result.evaluated), "failed": int(result.failed),
                   "warnings": int(getattr(result, "warnings", 0)), "success": bool(result.success),
                   "data_docs_path": str(found_docs) if found_docs else None}
    with engine.begin() as conn:
        runs.merge_outcome(conn, run_id, {"quality": quality})
        runs.heartbeat(conn, run_id)
    return quality


#: How long a step waits for the read database to show what the primary holds for the run.
READ_LAG_TIMEOUT = dt.timedelta(seconds=60)
_READ_SIDE_STATE = text("""
    select r.status,
           (select count(*) from reconciler.run_chunks c where c.run_id = r.id and c.status = 'compared') as compared,
           (select count(*) from reconciler.findings f where f.run_id = r.id) as findings,
           (select count(*) from reconciler.tasks t where t.last_seen_run_id = r.id) as tasks
    from reconciler.runs r where r.id = :run""")


def wait_for_read_side(engine: Engine, read_engine: Engine, run_id: int,
                       timeout: dt.timedelta = READ_LAG_TIMEOUT) -> None:
    """Wait until ``read_engine`` (a replica) shows the run as the primary does (status, compared chunks,
    findings, tasks), so quality checks and reports never read a run half replicated; raises
    :class:`ReadDatabaseLagError` (retry later) after ``timeout``."""
    if read_engine.url == engine.url:
        return
    with engine.connect() as conn:
        wanted = tuple(conn.execute(_READ_SIDE_STATE, {"run": run_id}).one())
    deadline = time.monotonic() + timeout.total_seconds()
    while True:
        with reading(read_engine) as reader:
            row = reader.execute(_READ_SIDE_STATE, {"run": run_id}).one_or_none()
        seen = tuple(row) if row is not None else None
        if seen == wanted:
            return
        if time.monotonic() >= deadline:
            raise ReadDatabaseLagError(
                f"the read database ({describe_url(read_engine.url)}) still shows run {run_id} as {seen} after "
                f"{timeout.total_seconds():.0f} s, the primary as {wanted} (status, compared chunks, findings, "
                f"tasks); check the replica's lag, or unset RECONCILER_READ_DATABASE_URL; retrying is safe")
        time.sleep(0.25)


@dataclass(frozen=True)
class Span:
    """Consecutive compared chunks handled in one task transaction; ``compared_at`` is the earliest."""

    first_id: int
    last_id: int
    compared_at: dt.datetime
    #: An incremental run's spans hold only the customers their chunks compared.
    customer_ids: tuple[int, ...] | None = None


def _span(rows: Sequence[Any]) -> Span:
    ids = None
    if any(getattr(r, "customer_ids", None) is not None for r in rows):
        ids = tuple(sorted({int(i) for r in rows for i in (getattr(r, "customer_ids", None) or ())}))
    return Span(int(rows[0].first_id), int(rows[-1].last_id), min(r.compared_at for r in rows), ids)


def group_spans(chunk_rows: Sequence[Any], max_customers: int = TASK_SPAN_CUSTOMERS) -> list[Span]:
    """Group compared chunks (in index order) into spans of consecutive chunks of at most ``max_customers``
    planned customers (pure). A chunk not compared breaks a span, so its customers are never judged clean."""
    spans: list[Span] = []
    current: list[Any] = []
    for row in chunk_rows:
        if current and (row.chunk_index != current[-1].chunk_index + 1
                        or sum(int(r.planned_customers) for r in current) + int(row.planned_customers) > max_customers):
            spans.append(_span(current))
            current = []
        current.append(row)
    if current:
        spans.append(_span(current))
    return spans


def open_run_tasks(engine: Engine, run_id: int) -> dict[str, int]:
    """Open (or refresh) one task per drifting customer from the staged findings, chunk by chunk, and dismiss
    the unresolved tasks of customers the run found clean (re-verified clean now). A rerun opens nothing new."""
    with engine.connect() as conn:
        run = runs.require_running(conn, run_id)
        options = _options(run)
        chunk_rows = chunk_store.compared_chunks(conn, run_id)
    for span in group_spans(chunk_rows):
        with engine.begin() as conn:
            _local_timeouts(conn)
            runs.require_running(conn, run_id)
            tasks.open_tasks_from_findings(conn, run_id, span.first_id, span.last_id)
            tasks.dismiss_vanished(conn, run_id, span.first_id, span.last_id, compared_at=span.compared_at,
                                   tolerance=options.tolerance,
                                   customer_ids=span.customer_ids if span.customer_ids is not None
                                   else options.customer_ids)
            runs.heartbeat(conn, run_id, min_interval=HEARTBEAT_INTERVAL)
    with engine.begin() as conn:
        counts = tasks.run_task_counts(conn, run_id)
        runs.store_totals(conn, run_id, runs.tally(conn, run_id))
        runs.merge_outcome(conn, run_id, {"tasks": counts})
    return counts



def build_report(engine: Engine, run_id: int, out_dir: Path | None = None, *,
                 read_engine: Engine | None = None) -> str:
    """Build the finance report (:func:`reconciler.report.build_run_report`), reading on ``read_engine`` when
    given (read only either way); return its folder."""
    from reconciler.report import build_run_report  # noqa: PLC0415  (plots and templates are heavy)

    with engine.begin() as conn:
        runs.store_totals(conn, run_id, runs.tally(conn, run_id))
    if read_engine is not None:
        wait_for_read_side(engine, read_engine, run_id)
    path = build_run_report(read_engine or engine, run_id, out_dir)
    with engine.begin() as conn:
        runs.merge_outcome(conn, run_id, {"report_path": str(path)})
        runs.heartbeat(conn, run_id)
    return str(path)


def finish_run(engine: Engine, run_id: int) -> RunSummary:
    """Close the run: ``halted`` when corrections were halted, else ``succeeded``, with its totals and the
    status of its tasks at this moment. A finished run is returned as it is (a retry changes nothing)."""
    with engine.begin() as conn:
        _local_timeouts(conn)
        row = runs.get_run(conn, run_id, for_update=True)
        if row["status"] in ("succeeded", "halted"):
            return _summary(conn, run_id)
        if row["status"] != "running":
            raise RunStateError(f"run {run_id} is {row['status']} ({row['error']}); it cannot be finished")
        totals = runs.tally(conn, run_id)
        if totals.compared_chunks < totals.chunks:
            raise RunStateError(
                f"run {run_id} has {totals.chunks - totals.compared_chunks} of {totals.chunks} chunks not compared; "
                f"compare them (compare_run_chunk) before finishing")
        outcome: Mapping[str, Any] = row["outcome"] or {}
        status = "halted" if outcome.get("halted_reason") else "succeeded"
        runs.merge_outcome(conn, run_id, {"task_counts": tasks.status_counts(conn, run_id)})
        runs.finish(conn, run_id, status, totals)
        verify_snapshot(conn, run_id, outcome)
        return _summary(conn, run_id)

