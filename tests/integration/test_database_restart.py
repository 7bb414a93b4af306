"""The database restarts under the product: pooled connections recover, nothing is lost or applied twice."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from typer.testing import CliRunner

from reconciler import correction_executor, migrate
from reconciler.balances import BalanceManager
from reconciler.cli import app
from reconciler.db import make_engine, start_embedded, stop_embedded
from reconciler.errors import DatabaseUnavailableError
from reconciler.pipeline import RunOptions, run_reconciliation
from reconciler.pipeline import runner as runner_module
from tests.factories import cached_balance, entry_count, ledger_sum, make_customer, set_cached_balance

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("quick_quality_and_report")]


@pytest.fixture
def own_server() -> Iterator[tuple[Path, Engine]]:
    """A PostgreSQL server of this test's own (restarting the session's server would disturb other tests). Its
    folder is not under pytest's shared tmp root, whose permissions other pytest processes on the machine reset."""
    home = Path(tempfile.mkdtemp(prefix="reconciler-restart-")) / "home"
    engine = make_engine(start_embedded(home))
    migrate.upgrade(engine)
    yield home, engine
    engine.dispose()
    stop_embedded(home)
    shutil.rmtree(home.parent, ignore_errors=True)


def test_core_and_runs_survive_a_database_restart(own_server: tuple[Path, Engine]) -> None:
    """After a restart the same engine works again; a payment refused while the database was down is applied
    exactly once on retry, and a run afterwards finds and corrects drift planted before the restart."""
    home, engine = own_server
    core = BalanceManager(engine)
    for customer in (1, 2, 3):
        make_customer(engine, customer)
        core.update_balance(customer, "100.00", kind="deposit", idempotency_key=f"open-{customer}")
    set_cached_balance(engine, 2, "107.25")  # drift written around the ledger before the restart

    assert stop_embedded(home)
    with pytest.raises(DatabaseUnavailableError, match="same idempotency_key"):
        core.update_balance(1, "5.00", kind="payment", idempotency_key="pay-during-outage")
    start_embedded(home)

    applied = core.update_balance(1, "5.00", kind="payment", idempotency_key="pay-during-outage")
    assert not applied.replayed and applied.balance_after == Decimal("105.00")
    again = core.update_balance(1, "5.00", kind="payment", idempotency_key="pay-during-outage")
    assert again.replayed and again.entry_id == applied.entry_id
    assert entry_count(engine, 1) == 2

    summary = run_reconciliation(engine, RunOptions(max_drift_ratio=Decimal("1"), chunk_size=2))
    assert summary.status == "succeeded"
    assert (summary.drift_count, summary.corrected) == (1, 1)
    for customer in (1, 2, 3):
        assert cached_balance(engine, customer) == ledger_sum(engine, customer)
    assert cached_balance(engine, 2) == Decimal("100.00")


def _restart_later(home: Path, seconds: float) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(seconds), start_embedded(home)), daemon=True)
    thread.start()
    return thread


def _stop(home: Path) -> None:
    for _ in range(20):  # pg_ctl refuses while the server is still finishing its start-up
        if stop_embedded(home):
            return
        time.sleep(0.2)
    raise AssertionError("the embedded server did not stop")


def _one_clear_line(err: str) -> str:
    """The one error line (progress lines aside), with no traceback and no SQLAlchemy link."""
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("reconciler: chunks")]
    assert len(lines) == 1, err
    (line,) = lines
    assert "Traceback" not in err and "sqlalche.me" not in err and "Background on this error" not in err
    assert "lost the ledger database (postgresql+psycopg://postgres@" in line and "rerunning is safe" in line
    return line


def test_a_database_restart_mid_run_ends_the_cli_run_with_one_line(
        own_server: tuple[Path, Engine], monkeypatch: pytest.MonkeyPatch) -> None:
    """`reconciler run` whose database restarts while it opens tasks: exit 3, ONE line on stderr (what was lost,
    which database without password, rerunning is safe), no traceback; the run is marked failed once the
    database is back, and the rerun finds and corrects the drift."""
    home, engine = own_server
    for customer in (1, 2, 3):
        make_customer(engine, customer)
        BalanceManager(engine).update_balance(customer, "100.00", kind="deposit")
    set_cached_balance(engine, 2, "107.25")
    monkeypatch.setenv("RECONCILER_DATABASE_URL", engine.url.render_as_string(hide_password=False))
    original = runner_module.open_run_tasks

    def restart_first(engine_: Engine, run_id: int) -> dict[str, int]:
        _stop(home)
        _restart_later(home, 1.5)
        return original(engine_, run_id)

    monkeypatch.setattr(runner_module, "open_run_tasks", restart_first)
    result = CliRunner().invoke(app, ["run", "--max-drift-ratio", "1"])
    assert result.exit_code == 3, result.output
    line = _one_clear_line(result.stderr)
    assert "while opening tasks (run 1)" in line and "marked failed" in line
    monkeypatch.setattr(runner_module, "open_run_tasks", original)
    with engine.connect() as conn:
        assert conn.execute(text("select status from reconciler.runs where id = 1")).scalar_one() == "failed"
    summary = run_reconciliation(engine, RunOptions(max_drift_ratio=Decimal("1")))
    assert (summary.status, summary.drift_count, summary.corrected) == ("succeeded", 1, 1)
    assert cached_balance(engine, 2) == ledger_sum(engine, 2)


def test_a_database_lost_while_resolving_a_task_is_one_line_and_exit_3(
        own_server: tuple[Path, Engine], monkeypatch: pytest.MonkeyPatch) -> None:
    """`reconciler tasks resolve` whose database goes away mid-command: exit 3 and one clear line."""
    home, engine = own_server
    make_customer(engine, 1, "5.00")
    summary = run_reconciliation(engine, RunOptions(max_drift_ratio=Decimal("1"), auto_correct=False))
    assert summary.open == 1
    monkeypatch.setenv("RECONCILER_DATABASE_URL", engine.url.render_as_string(hide_password=False))
    original = correction_executor.resolve_task

    def lose_first(*args: object, **kwargs: object) -> object:
        _stop(home)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(correction_executor, "resolve_task", lose_first)
    try:
        result = CliRunner().invoke(app, ["tasks", "resolve", "1", "--action", "correct", "--by", "ann",
                                          "--note", "checked"])
    finally:
        start_embedded(home)
    assert result.exit_code == 3, result.output
    assert "while resolving task 1" in _one_clear_line(result.stderr)
