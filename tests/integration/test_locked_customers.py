"""A customer locked by another session never stalls or fails a run: bookkeeping never waits on the lock, the
correction is skipped at once as ``busy`` (naming the holder) and done by the next run once the lock is gone."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL
from typer.testing import CliRunner

from reconciler.balances import BalanceManager
from reconciler.cli import app
from reconciler.db import make_engine
from tests.factories import cached_balance, ledger_sum, make_customer, make_honest_customers, set_cached_balance
from tests.fix_locks import SERVICE_APPLICATION, LockWaitWatcher, hold_row_locks, libpq

pytestmark = pytest.mark.usefixtures("quick_quality_and_report")

runner = CliRunner()
#: customer -> planted drift (all within the auto-correct limit). 8 and 9 get locked.
PLANTED = {7: Decimal("1.50"), 8: Decimal("-2.00"), 9: Decimal("3.25"), 10: Decimal("0.75")}
LOCKS = {8: "FOR UPDATE", 9: "FOR NO KEY UPDATE"}


@pytest.fixture
def ledger(database_env: URL) -> Iterator[Engine]:
    """200 honest customers on the CLI's database, four of them drifting."""
    engine = make_engine(database_env)
    make_honest_customers(engine, range(1, 201))
    for customer_id, drift in PLANTED.items():
        set_cached_balance(engine, customer_id, Decimal("50.00") + drift)
    yield engine
    engine.dispose()


def _run(*args: str) -> tuple[int, dict[str, object]]:
    result = runner.invoke(app, ["run", "--max-drift-ratio", "1", "--chunk-size", "50", "--json", *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, json.loads(result.stdout)


def _task(engine: Engine, customer_id: int) -> dict[str, object]:
    with engine.connect() as conn:
        row = conn.execute(text("""select id, status, resolution from reconciler.tasks where customer_id = :c
                                   order by id desc limit 1"""), {"c": customer_id}).mappings().one()
    return dict(row)


def test_locked_customers_are_skipped_as_busy_and_corrected_next_run(ledger: Engine, database_env: URL) -> None:
    """With 8 held FOR UPDATE and 9 FOR NO KEY UPDATE by a service, the run succeeds with exit 1 without any
    session waiting on the service: 7 and 10 are corrected, 8 and 9 stay open as busy naming the service's
    pid; the next run, locks released, corrects them and exits 0."""
    with hold_row_locks(database_env, LOCKS) as holder, LockWaitWatcher(database_env, holder.pid) as watcher:
        code, payload = _run()
    assert watcher.waiters == []
    assert code == 1, payload
    assert payload["status"] == "succeeded"
    assert (payload["drift_count"], payload["corrected"], payload["open"]) == (4, 2, 2)
    busy = payload["busy"]
    assert isinstance(busy, list)
    assert [item["customer_id"] for item in busy] == [8, 9]
    for item in busy:
        assert item["lockers"] == [{"pid": holder.pid, "application_name": SERVICE_APPLICATION,
                                    "state": "idle in transaction"}]
        assert item["runs_in_a_row"] == 1
    for customer_id in (7, 10):
        assert cached_balance(ledger, customer_id) == ledger_sum(ledger, customer_id)
        assert _task(ledger, customer_id)["status"] == "corrected"
    for customer_id in (8, 9):
        assert cached_balance(ledger, customer_id) == Decimal("50.00") + PLANTED[customer_id]
        task = _task(ledger, customer_id)
        assert task["status"] == "open"
        events = task["resolution"]["events"]  # type: ignore[index]
        assert events[-1]["action"] == "busy"
        assert events[-1]["values"]["lockers"][0]["pid"] == holder.pid
        assert "pending" not in task["resolution"]  # type: ignore[operator]

    code, payload = _run()
    assert code == 0, payload
    assert (payload["corrected"], payload["open"], payload["busy"]) == (2, 0, [])
    for customer_id in (8, 9):
        assert cached_balance(ledger, customer_id) == ledger_sum(ledger, customer_id)
        assert _task(ledger, customer_id)["status"] == "corrected"


def test_a_customer_busy_two_runs_in_a_row_is_counted(ledger: Engine, database_env: URL) -> None:
    """Two runs while the lock is held: the second lists customer 8 busy two runs in a row."""
    with hold_row_locks(database_env, {8: "FOR UPDATE"}):
        _run()
        code, payload = _run()
    assert code == 1
    assert [(item["customer_id"], item["runs_in_a_row"]) for item in payload["busy"]] == [(8, 2)]  # type: ignore[union-attr,index]


def test_dry_run_with_locked_customers_records_every_finding_and_task(ledger: Engine, database_env: URL) -> None:
    """A dry run with 8 and 9 locked records all four findings and opens all four tasks; nothing is corrected."""
    before = {c: cached_balance(ledger, c) for c in PLANTED}
    with hold_row_locks(database_env, LOCKS) as holder, LockWaitWatcher(database_env, holder.pid) as watcher:
        code, payload = _run("--dry-run")
    assert watcher.waiters == []
    assert code == 1
    assert (payload["status"], payload["drift_count"], payload["open"], payload["corrected"]) == ("succeeded", 4, 4, 0)
    with ledger.connect() as conn:
        found = conn.execute(text("select customer_id from reconciler.findings where run_id = :r order by 1"),
                             {"r": payload["run_id"]}).scalars().all()
    assert found == sorted(PLANTED)
    assert {c: _task(ledger, c)["status"] for c in PLANTED} == dict.fromkeys(PLANTED, "open")
    assert {c: cached_balance(ledger, c) for c in PLANTED} == before


def test_tasks_still_require_an_existing_customer(ledger: Engine) -> None:
    """Without the foreign key, the database still refuses a task for a customer that does not exist, and
    refuses to delete a customer that has tasks."""
    with pytest.raises(Exception, match="customer 9999 does not exist"), ledger.begin() as conn:
        conn.execute(text("""insert into reconciler.tasks (customer_id, stored_balance, ledger_sum, drift)
                             values (9999, 1, 0, 1)"""))
    make_customer(ledger, 500, "1.00")  # no entries: only the tasks could keep it from being deleted
    with ledger.begin() as conn:
        conn.execute(text("""insert into reconciler.tasks (customer_id, stored_balance, ledger_sum, drift)
                             values (500, 1.00, 0.00, 1.00)"""))
    with pytest.raises(Exception, match="customer 500 has reconciliation tasks"), ledger.begin() as conn:
        conn.execute(text("delete from customers where id = 500"))
    with pytest.raises(Exception, match="customer 500 has reconciliation tasks"), ledger.begin() as conn:
        conn.execute(text("update customers set id = 501 where id = 500"))


def test_the_core_never_blocks_a_key_share_lock(engine: Engine, db_url: URL) -> None:
    """While the core holds customer 1 (a transfer waiting for customer 2, which a service holds), another
    session can still take FOR KEY SHARE on customer 1 (what a foreign key check takes) without waiting, but
    not FOR UPDATE: the core's lock is FOR NO KEY UPDATE."""
    make_honest_customers(engine, [1, 2], "100.00")
    core_engine = make_engine(db_url, connect_args={"application_name": "core-under-test"})
    manager = BalanceManager(core_engine)
    done = threading.Event()
    errors: list[BaseException] = []

    def transfer() -> None:
        try:
            manager.transfer(1, 2, Decimal("10.00"), kind="transfer")
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)
        finally:
            done.set()

    with hold_row_locks(db_url, {2: "FOR UPDATE"}) as holder:
        worker = threading.Thread(target=transfer)
        worker.start()
        with psycopg.connect(libpq(db_url), autocommit=True) as probe:
            # The core is waiting for the holder once pg_blocking_pids says so (an observable state, not a guess).
            while not done.is_set() and not probe.execute(
                    "select exists (select 1 from pg_stat_activity where application_name = 'core-under-test' "
                    "and %s = any(pg_blocking_pids(pid)))", (holder.pid,)).fetchone()[0]:  # type: ignore[index]
                done.wait(0.01)
            assert not done.is_set(), errors
            probe.execute("begin")
            probe.execute("select id from customers where id = 1 for key share nowait")
            probe.execute("rollback")
            probe.execute("begin")
            with pytest.raises(psycopg.errors.LockNotAvailable):
                probe.execute("select id from customers where id = 1 for update nowait")
            probe.execute("rollback")
    worker.join()
    core_engine.dispose()
    assert errors == []
    assert (cached_balance(engine, 1), cached_balance(engine, 2)) == (Decimal("90.00"), Decimal("110.00"))


def test_the_report_lists_busy_customers(ledger: Engine, database_env: URL, real_steps: None) -> None:
    """The finance report of a run with a locked customer lists it with the session holding the lock, in the
    page and in summary.json."""
    with hold_row_locks(database_env, {8: "FOR UPDATE"}) as holder:
        code, payload = _run()
    assert code == 1
    report = Path(str(payload["report_path"]))
    summary = json.loads((report / "summary.json").read_text())
    assert [(b["customer_id"], b["lockers"]) for b in summary["busy"]] == [
        (8, f"pid {holder.pid} ({SERVICE_APPLICATION})")]
    page = (report / "report.html").read_text()
    assert 'id="busy-8"' in page and SERVICE_APPLICATION in page
