"""Runs that die: killed mid-way, silent, or failing in a step are marked failed, and a rerun completes
without duplicates."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL
from typer.testing import CliRunner

from reconciler import pipeline, runs
from reconciler.cli import app
from reconciler.db import make_engine
from reconciler.errors import RunFailedError, RunStateError
from reconciler.pipeline import RunOptions, run_reconciliation
from reconciler.pipeline import steps as pipeline_steps
from tests.factories import seed_uniform_ledger

ROOT = Path(__file__).resolve().parents[2]
NO_HALT = Decimal("1")


pytestmark = pytest.mark.usefixtures("quick_quality_and_report")


def scalar(engine: Engine, sql: str, **params: object) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll a database condition (synchronisation by observation, not by sleeping a guessed time)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.mark.slow
def test_a_run_killed_mid_way_is_marked_failed_and_a_rerun_completes_without_duplicates(
        engine: Engine, database_env: URL) -> None:
    """`reconciler run` in a subprocess is SIGKILLed after comparing some chunks (it is held on the findings
    table so the moment is certain); the next run marks it failed at once (its session lock is gone) and
    completes: one task per drifting customer, each corrected exactly once."""
    seed_uniform_ledger(engine, 3000, range(2901, 2931))
    assert run_reconciliation(engine, RunOptions(dry_run=True, max_drift_ratio=NO_HALT)).open == 30
    holder = psycopg.connect(database_env.set(drivername="postgresql").render_as_string(hide_password=False))
    holder.execute("lock table reconciler.findings in share mode")  # chunks with drift cannot stage findings
    env = {**os.environ, "RECONCILER_DATABASE_URL": database_env.render_as_string(hide_password=False)}
    child = subprocess.Popen([sys.executable, "-m", "reconciler", "run", "--chunk-size", "100", "--workers", "1",
                              "--json", "--max-drift-ratio", "1"],
                             cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def stuck_after_some_chunks() -> bool:
            assert child.poll() is None, child.stderr.read().decode() if child.stderr else child.returncode
            compared = scalar(engine, """select count(*) from reconciler.run_chunks c join reconciler.runs r
                                         on r.id = c.run_id where r.status = 'running' and c.status = 'compared'""")
            waiting = scalar(engine, """select count(*) from pg_locks l join pg_database d on d.oid = l.database
                                        where not l.granted and d.datname = current_database()""")
            return int(compared or 0) >= 5 and int(waiting or 0) > 0

        wait_until(stuck_after_some_chunks, "the subprocess to compare chunks and wait on the findings lock")
        killed_run = int(scalar(engine, "select id from reconciler.runs where status = 'running'"))
        child.send_signal(signal.SIGKILL)
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        holder.rollback()
        holder.close()
    wait_until(lambda: not scalar(engine, "select count(*) from pg_locks where locktype = 'advisory' and objid = :r",
                                  r=killed_run), "PostgreSQL to end the killed run's session")
    assert scalar(engine, "select status from reconciler.runs where id = :r", r=killed_run) == "running"

    result = CliRunner().invoke(app, ["run", "--json", "--max-drift-ratio", "1"])
    assert result.exit_code == 0, result.stderr
    rerun = json.loads(result.stdout)
    assert (rerun["status"], rerun["drift_count"], rerun["corrected"]) == ("succeeded", 30, 30)
    killed = scalar(engine, "select error from reconciler.runs where id = :r and status = 'failed'", r=killed_run)
    assert killed is not None and "session ended" in str(killed) and f"run {rerun['run_id']}" in str(killed)
    assert scalar(engine, "select count(*) from reconciler.tasks") == 30
    assert scalar(engine, "select count(distinct customer_id) from reconciler.tasks where status = 'corrected'") == 30
    assert scalar(engine, "select count(*) from reconciler.balance_reconciliations") == 30
    assert scalar(engine, """select count(*) from customers c where c.balance <>
                             (select sum(amount) from customer_ledger_entries e where e.customer_id = c.id)""") == 0


def test_a_silent_step_by_step_run_is_failed_after_the_stale_threshold(engine: Engine) -> None:
    """A run without a session lock whose heartbeat is older than DEFAULT_STALE_AFTER is failed by the next
    start, with the reason; one with a fresh heartbeat is left running."""
    seed_uniform_ledger(engine, 10, range(0))
    silent = pipeline.start_run(engine, RunOptions(), "scheduled")
    alive = pipeline.start_run(engine, RunOptions(), "scheduled")
    stale = runs.DEFAULT_STALE_AFTER.total_seconds() + 60
    with engine.begin() as conn:
        conn.execute(text("update reconciler.runs set heartbeat_at = now() - make_interval(secs => :s) where id = :r"),
                     {"s": stale, "r": silent})
    newest = pipeline.start_run(engine, RunOptions(), "manual")
    assert scalar(engine, "select status from reconciler.runs where id = :r", r=silent) == "failed"
    error = str(scalar(engine, "select error from reconciler.runs where id = :r", r=silent))
    assert "no heartbeat" in error and f"by run {newest}" in error
    assert scalar(engine, "select status from reconciler.runs where id = :r", r=alive) == "running"
    with pytest.raises(RunStateError):
        pipeline.plan_run(engine, silent)


def test_a_live_run_holding_its_session_lock_is_never_failed(engine: Engine, db_url: URL) -> None:
    """A run whose process still holds its session lock stays running however old its heartbeat; once its
    session ends it is failed at the next start, without waiting for any timeout."""
    seed_uniform_ledger(engine, 10, range(0))
    other = make_engine(db_url)
    holder = other.connect()
    with holder.begin():
        live = runs.insert_run(holder, RunOptions().to_params(), "cli", session_lock=True)
        holder.execute(text("update reconciler.runs set heartbeat_at = now() - interval '1 day' where id = :r"),
                       {"r": live})
    pipeline.start_run(engine, RunOptions(), "manual")
    assert scalar(engine, "select status from reconciler.runs where id = :r", r=live) == "running"
    holder.invalidate()  # the session ends (as when the process dies)
    holder.close()
    other.dispose()
    wait_until(lambda: not scalar(engine, "select count(*) from pg_locks where locktype = 'advisory'"),
               "the session to end")
    pipeline.start_run(engine, RunOptions(), "manual")
    assert scalar(engine, "select status from reconciler.runs where id = :r", r=live) == "failed"


def test_a_step_that_raises_marks_the_run_failed_and_the_rerun_recovers(engine: Engine,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """An error inside a step: RunFailedError naming the run, status failed with the reason, nothing corrected;
    the next run completes with one task per drifting customer."""
    seed_uniform_ledger(engine, 50, range(10, 13))

    def broken(conn: object, drifts: object) -> dict[int, object]:
        raise RuntimeError("explain exploded")

    with monkeypatch.context() as patched, pytest.raises(RunFailedError, match="explain exploded") as caught:
        patched.setattr(pipeline_steps, "explain_drifts", broken)
        run_reconciliation(engine, RunOptions(max_drift_ratio=NO_HALT))
    failed = caught.value.run_id
    assert scalar(engine, "select status from reconciler.runs where id = :r", r=failed) == "failed"
    assert "explain exploded" in str(scalar(engine, "select error from reconciler.runs where id = :r", r=failed))
    assert scalar(engine, "select count(*) from reconciler.balance_reconciliations") == 0
    summary = run_reconciliation(engine, RunOptions(max_drift_ratio=NO_HALT))
    assert (summary.status, summary.corrected) == ("succeeded", 3)
    assert scalar(engine, "select count(*) from reconciler.tasks") == 3


def test_an_interrupted_run_is_marked_failed(engine: Engine) -> None:
    """Ctrl-C during the comparison: the run is failed as interrupted and the interrupt goes on."""
    seed_uniform_ledger(engine, 30, range(0))

    def interrupt(done: int, total: int, customers: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_reconciliation(engine, RunOptions(chunk_size=5), progress=interrupt)
    assert scalar(engine, "select status from reconciler.runs") == "failed"
    assert "interrupted" in str(scalar(engine, "select error from reconciler.runs"))
    assert not scalar(engine, "select count(*) from pg_locks where locktype = 'advisory'")
