"""The in-process runner: every step of one run in this process, chunks compared on a thread pool.

Invariant: the run holds a session advisory lock for its whole life (so a dead process is seen at once) and
ends ``succeeded``, ``halted`` or ``failed`` with its reason; a lost database ends it with
:class:`~reconciler.errors.RunFailedError` carrying one clear line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from sqlalchemy import Engine, text

from reconciler import runs
from reconciler.db import database_lost
from reconciler.db_errors import first_line
from reconciler.errors import (
    DatabaseLostError,
    RunFailedError,
)
from reconciler.quality_worker import QualityWorker

from .correct import apply_run_corrections
from .options import Progress, RunOptions
from .people import describe_error
from .steps import (
    HEARTBEAT_INTERVAL,
    _begin_run,
    _compare,
    build_report,
    check_quality,
    finish_run,
    mark_run_failed,
    open_run_tasks,
    plan_run,
)
from .summary import RunSummary, load_summary

log = logging.getLogger("reconciler.pipeline")


def _compare_all(engine: Engine, run_id: int, plan: Sequence[Mapping[str, int]], options: RunOptions,
                 progress: Progress | None, beat: Callable[[], None], read_engine: Engine | None) -> None:
    total = len(plan)
    done = checked = 0
    if progress is not None:
        progress(0, total, 0)
    pending: set[Future[dict[str, int]]] = set()
    queue = iter(plan)
    window = options.workers * 4
    with ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix="compare") as pool:
        try:
            while True:
                while len(pending) < window:
                    item = next(queue, None)
                    if item is None:
                        break
                    pending.add(pool.submit(_compare, engine, run_id, item["chunk_index"], options, read_engine))
                if not pending:
                    break
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    result = future.result()
                    done += 1
                    checked += result["customers_checked"]
                    if progress is not None:
                        progress(done, total, checked)
                beat()
        except BaseException:
            for future in pending:
                future.cancel()
            raise


def run_reconciliation(engine: Engine, options: RunOptions, *, trigger: str = "cli",
                       progress: Progress | None = None, report_dir: Path | None = None,
                       read_engine: Engine | None = None) -> RunSummary:
    """Run every step in this process, chunks compared in parallel by ``options.workers`` threads (each holds two
    of ``engine``'s connections while it compares a chunk, and the run one more for its session lock: size the
    pool for ``2 * workers + 1``, or each chunk opens a connection of its own).

    The read-only steps (compare and explain, quality checks, report) read on ``read_engine`` when given (the
    read URL: a replica, or a login that may only SELECT), else on ``engine``; read only either way.

    The run holds a session advisory lock for its whole life, so if this process dies the next run marks it
    ``failed`` at once. Bad options or unknown ``customer_ids`` raise before anything is written; an error
    after the start marks the run ``failed`` (with the reason) and raises :class:`RunFailedError`.
    ``progress(done_chunks, total_chunks, customers_checked)`` is called as chunks complete.
    """
    runs.check_trigger(trigger)
    with engine.connect() as lock_conn:
        try:
            with lock_conn.begin():
                run_id = _begin_run(lock_conn, options, trigger, session_lock=True)
        except BaseException:
            # The insert rolled back; a session lock taken before the failure must not outlive it.
            with lock_conn.begin():
                lock_conn.execute(text("select pg_advisory_unlock_all()"))
            raise
        lost: DatabaseLostError | None = None
        try:
            def beat() -> None:
                with lock_conn.begin():
                    runs.heartbeat(lock_conn, run_id, min_interval=HEARTBEAT_INTERVAL)

            step = "starting"
            # GX's import and the suites that need not wait run in a child beside the comparison
            # (reconciler.quality_worker); with a separate read URL the step stays here, on that URL.
            worker = None if read_engine is not None else QualityWorker.start(
                engine.url.render_as_string(hide_password=False), run_id, workers=options.workers)
            try:
                step = "planning its chunks"
                plan = plan_run(engine, run_id, read_engine=read_engine)  # the snapshot where comparisons read
                step = "comparing its chunks"
                _compare_all(engine, run_id, plan, options, progress, beat, read_engine)
                beat()
                step = "checking data quality"
                check_quality(engine, run_id, read_engine=read_engine, worker=worker)
                step = "opening tasks"
                open_run_tasks(engine, run_id)
                step = "correcting"
                apply_run_corrections(engine, run_id)
                step = "finishing"
                finish_run(engine, run_id)
                # After finishing, so the filed report shows the run's final status, not "running".
                step = "building the report"
                build_report(engine, run_id, report_dir, read_engine=read_engine)
                return load_summary(engine, run_id)
            except Exception as exc:
                lost = database_lost(exc, engine.url, doing=f"{step} (run {run_id})")
                if lost is None:
                    reason = describe_error(exc)
                    _record_failure(engine, run_id, reason)
                    raise RunFailedError(f"run {run_id} failed: {reason}", run_id) from exc
                marked = _record_failure(engine, run_id, str(lost), attempts=LOST_DATABASE_ATTEMPTS, quiet=True)
                status = "marked failed" if marked else "will be marked failed by the next run"
                raise RunFailedError(f"run {run_id} failed ({status}): {lost}", run_id) from lost
            except BaseException:
                _record_failure(engine, run_id, "interrupted; a new run redoes the work without duplicates")
                raise
            finally:
                if worker is not None:
                    worker.close()
        finally:
            try:
                if lock_conn.in_transaction():
                    lock_conn.rollback()
                with lock_conn.begin():
                    runs.release_lock(lock_conn, run_id)
            except Exception:  # the session is unusable: closing it releases the lock anyway
                (log.debug if lost is not None else log.warning)(
                    "could not release the session lock of run %s; closing its connection", run_id)
                lock_conn.invalidate()


#: When the database went away, marking the run failed is tried this often, a second apart (a restarting
#: server is usually back within that); otherwise the next run's start marks it failed.
LOST_DATABASE_ATTEMPTS = 5


def _record_failure(engine: Engine, run_id: int, reason: str, *, attempts: int = 1, quiet: bool = False) -> bool:
    """Mark the run failed; False when the database would not take it (the next run's start marks it then)."""
    for attempt in range(attempts):
        try:
            mark_run_failed(engine, run_id, reason)
            return True
        except Exception as exc:  # the database may be what failed
            if attempt + 1 < attempts:
                time.sleep(1.0)
                continue
            if quiet:
                log.debug("could not mark run %s failed: %s", run_id, first_line(exc))
            else:
                log.exception("could not mark run %s failed (%s); the next run will", run_id, reason)
    return False
