"""The audit trail: one chained row per event, append-only in the database, verified by `audit verify`,
and never forked by concurrent writers."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from reconciler import demo, pipeline
from reconciler.audit import AuditEvent, append_audit, audit_rows, read_head, verify_chain
from reconciler.balances import BalanceManager
from reconciler.cli import app
from reconciler.correction_executor import resolve_task
from reconciler.db import make_engine, reading
from reconciler.pipeline import RunOptions
from reconciler.tasks import list_tasks
from tests.factories import cached_balance, make_customer, make_drifting_customer, set_cached_balance

pytestmark = pytest.mark.usefixtures("quick_quality_and_report")
runner = CliRunner()


def verify_cli(*flags: str) -> tuple[int, str]:
    result = runner.invoke(app, ["audit", "verify", *flags])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout


def tamper(engine: Engine, statement: str) -> None:
    """What a superuser can do: switch the triggers off for the session and change a row."""
    with engine.begin() as conn:
        conn.execute(text("set local session_replication_role = replica"))
        conn.execute(text(statement))


@pytest.fixture
def demo_with_review(engine: Engine, database_env: URL) -> Engine:
    """A demo ledger after one run (corrections within the limit, the rest sent to review) and one reviewed
    task corrected by a person."""
    demo.seed(engine, demo.SeedOptions(customers=300, entries_per_customer=4, drift_rate=Decimal("0.05"), seed=7))
    with engine.connect() as conn:  # a few small drifts too, which the run corrects on its own
        small = list(conn.execute(text("""select id from customers where id not in
                                           (select customer_id from reconciler.demo_plants) order by id limit 4""")
                                  ).scalars())
    for customer in small:
        set_cached_balance(engine, customer, cached_balance(engine, customer) + Decimal("2.00"))
    summary = pipeline.run_reconciliation(engine, RunOptions(max_drift_ratio=Decimal("1"),
                                                             auto_correct_limit=Decimal("5.00")))
    assert summary.corrected > 0 and summary.needs_review > 0
    with engine.connect() as conn:
        review = list_tasks(conn, status="needs_review", limit=1)[0]
    resolve_task(engine, review.id, "correct", by="alice@finance", note="checked against the bank statement")
    return engine


def test_every_transition_correction_and_approval_is_one_chained_row(demo_with_review: Engine) -> None:
    """Each task event, each correction the core made (old and new values, policy, who) and the approval is one
    row; the chain verifies, and `audit verify` prints its length and head hash (exit 0)."""
    engine = demo_with_review
    with engine.connect() as conn:
        events = conn.execute(text("""select coalesce(sum(jsonb_array_length(resolution -> 'events')), 0)
                                      from reconciler.tasks""")).scalar_one()
        changed = conn.execute(text("select count(*) from reconciler.balance_reconciliations where changed"))\
            .scalar_one()
        rows = audit_rows(conn)
        head = read_head(conn)
    kinds = [r["kind"] for r in rows]
    assert kinds.count("task") == events
    assert kinds.count("correction") == changed > 0
    approvals = [r for r in rows if r["kind"] == "approval"]
    assert len(approvals) == 1 and approvals[0]["actor"] == "alice@finance"
    correction = next(r for r in rows if r["kind"] == "correction" and r["actor"] == "alice@finance")
    assert {"old_balance", "new_balance", "policy", "customer_id"} <= set(correction["data"])
    assert correction["data"]["audit"]["approved_by"] == "alice@finance"
    assert approvals[0]["seq"] < correction["seq"]

    code, out = verify_cli("--json")
    assert code == 0, out
    assert json.loads(out) == {"intact": True, "length": head.length, "head_hash": head.hash, "broken": None}
    code, out = verify_cli()
    assert code == 0 and f"{head.length} rows, head hash {head.hash}" in out


def test_the_report_prints_the_head_hash_at_report_time(demo_with_review: Engine, tmp_path: Path,
                                                         real_steps: None) -> None:
    """The finance report (HTML and summary.json) carries the chain's length and head hash when it was built."""
    from reconciler.report import build_run_report

    with demo_with_review.connect() as conn:
        head = read_head(conn)
    folder = build_run_report(demo_with_review, 1, tmp_path / "report")
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["audit_head"] == {"length": head.length, "hash": head.hash}
    assert head.hash in (folder / "report.html").read_text()


def test_verify_names_the_row_a_superuser_edited(demo_with_review: Engine) -> None:
    """An audit row edited with triggers disabled: `audit verify` exits 1 naming that row, expected and actual."""
    with demo_with_review.connect() as conn:
        target = next(r for r in audit_rows(conn) if r["kind"] == "correction")
        stored = conn.execute(text("select hash from reconciler.audit_log where seq = :s"),
                              {"s": target["seq"]}).scalar_one()
    tamper(demo_with_review, f"""update reconciler.audit_log
                                 set body = replace(body, '"new_balance": "', '"new_balance": "1')
                                 where seq = {target['seq']}""")
    code, out = verify_cli("--json")
    broken = json.loads(out)["broken"]
    assert code == 1
    assert broken["seq"] == target["seq"] and broken["actual"] == stored and broken["expected"] != stored
    code, out = verify_cli()
    assert code == 1 and f"BROKEN at row {target['seq']}" in out


def test_verify_names_the_row_after_a_deleted_one(demo_with_review: Engine) -> None:
    """One audit row deleted with triggers disabled: `audit verify` exits 1 naming the row after the gap."""
    with demo_with_review.connect() as conn:
        length = read_head(conn).length
    gone = length // 2
    tamper(demo_with_review, f"delete from reconciler.audit_log where seq = {gone}")
    code, out = verify_cli("--json")
    assert code == 1
    assert json.loads(out)["broken"]["seq"] == gone + 1


def test_verify_exits_2_on_a_database_without_the_audit_trail(empty_db_url: URL,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Bad input (a database never migrated): exit 2 with what to do."""
    monkeypatch.setenv("RECONCILER_DATABASE_URL", empty_db_url.render_as_string(hide_password=False))
    result = runner.invoke(app, ["audit", "verify"])
    assert result.exit_code == 2 and "db upgrade" in result.stderr


@pytest.mark.parametrize("statement", [
    "update reconciler.audit_log set actor = 'me'",
    "delete from reconciler.audit_log",
    "truncate reconciler.audit_log",
    "delete from reconciler.audit_head",
])
def test_the_audit_log_is_append_only_in_the_database(engine: Engine, statement: str) -> None:
    """UPDATE, DELETE and TRUNCATE of audit rows (and removing the head) are refused by a trigger, for anyone."""
    with engine.begin() as conn:
        append_audit(conn, AuditEvent("guard", "ops", {"mode": "observe"}))
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(text(statement))


def test_append_audit_chains_events_in_order_at_commit_and_the_guard_can_call_it(engine: Engine) -> None:
    """append_audit queues events in the caller's transaction; at commit they are chained in order (each
    prev_hash the previous hash); nothing to append queues nothing; the queue is empty afterwards."""
    with engine.begin() as conn:
        assert append_audit(conn, AuditEvent("guard", "ops", {"mode": "observe"})) == 1
        assert append_audit(conn, [AuditEvent("guard", "ops", {"mode": "enforce"}),
                                   AuditEvent("guard", "ops", {"mode": "off"})]) == 2
        assert append_audit(conn, []) == 0
        assert read_head(conn).length == 0  # not chained before the commit
    with reading(engine) as conn:
        report = verify_chain(conn)
        links = conn.execute(text("select prev_hash, hash from reconciler.audit_log order by seq")).all()
        modes = [r["data"]["mode"] for r in audit_rows(conn)]
        queued = conn.execute(text("select count(*) from reconciler.audit_queue")).scalar_one()
    assert report.intact and report.length == 3 and report.head_hash == links[-1].hash
    assert [row.prev_hash for row in links[1:]] == [row.hash for row in links[:-1]]
    assert modes == ["observe", "enforce", "off"] and queued == 0


def test_an_open_transaction_that_appended_holds_no_lock_until_it_commits(engine: Engine) -> None:
    """The chain is locked only at commit: while one transaction that appended is still open (a run's long
    task transaction, say), another appends and commits at once; the chain follows commit order."""
    with engine.connect() as first, engine.connect() as second:
        with first.begin():
            append_audit(first, AuditEvent("guard", "first", {}))
            with second.begin():
                second.execute(text("set local lock_timeout = '1s'"))
                append_audit(second, AuditEvent("guard", "second", {}))
            # second committed while first is still open
        with reading(engine) as conn:
            actors = [r["actor"] for r in audit_rows(conn)]
            assert verify_chain(conn).intact
    assert actors == ["second", "first"]


def test_a_rolled_back_transition_leaves_no_audit_row(engine: Engine) -> None:
    """The audit row is written in the transition's own transaction: a rollback takes both away."""
    make_drifting_customer(engine, 1, drift="3.00")
    with pytest.raises(RuntimeError), engine.begin() as conn:
        append_audit(conn, AuditEvent("guard", "ops", {"mode": "observe"}))
        raise RuntimeError("boom")
    with engine.connect() as conn:
        assert read_head(conn).length == 0
        assert conn.execute(text("select count(*) from reconciler.audit_log")).scalar_one() == 0


def test_the_cores_realtime_task_is_audited_with_its_opening(engine: Engine) -> None:
    """A payment that finds the balance off its chain opens a realtime task, and its audit row, in its own
    transaction."""
    make_drifting_customer(engine, 1, drift="3.00")
    BalanceManager(engine).update_balance(1, Decimal("1.00"), kind="payment")
    with engine.connect() as conn:
        rows = audit_rows(conn)
    assert [(r["kind"], r["data"]["event"]["action"]) for r in rows] == [("task", "open")]
    assert rows[0]["data"]["customer_id"] == 1


def test_guard_mode_changes_and_its_bypass_tasks_are_on_the_chain(engine: Engine) -> None:
    """Each guard mode change is one row (who: the database login); a write around the core that breaks the
    ledger opens its bypass task at commit with its audit row, and updating that task adds one more."""
    from reconciler.guard import install, uninstall

    make_customer(engine, 1)
    BalanceManager(engine).update_balance(1, Decimal("100.00"), kind="opening_balance")
    install(engine, "observe")
    set_cached_balance(engine, 1, "125.00")  # around the core: breaks the ledger
    set_cached_balance(engine, 1, "130.00")
    install(engine, "enforce", ["legacy-billing"])
    uninstall(engine)
    with reading(engine) as conn:
        rows = audit_rows(conn)
        assert verify_chain(conn).intact
    summary = [(r["kind"], r["actor"], r["data"].get("mode") or r["data"]["event"]["action"]) for r in rows]
    assert summary == [("guard", "postgres", "observe"), ("task", "reconciler guard", "open"),
                       ("task", "reconciler guard", "update"), ("guard", "postgres", "enforce"),
                       ("guard", "postgres", "off")]
    assert rows[3]["data"]["allow"] == ["legacy-billing"]


_WORKER = textwrap.dedent("""
    import sys, time
    from decimal import Decimal
    from pathlib import Path
    from sqlalchemy import text
    from reconciler.audit import AuditEvent, append_audit
    from reconciler.balances import BalanceManager
    from reconciler.db import make_engine

    url, first, count, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
    engine = make_engine(url)
    manager = BalanceManager(engine)
    while not go.exists():
        time.sleep(0.01)
    for customer in range(first, first + count):
        result = manager.reconcile_balance(customer, "ledger", audit={"by": f"process {first}"})
        assert result.changed, result
        with engine.begin() as conn:
            append_audit(conn, AuditEvent("task", f"process {first}", {"customer_id": customer}))
    engine.dispose()
""")


@pytest.mark.slow
def test_concurrent_corrections_from_two_processes_leave_one_unbroken_chain(engine: Engine, db_url: URL,
                                                                            tmp_path: Path) -> None:
    """Two processes correcting (and auditing) at the same time: every event is on ONE chain, none forked."""
    per_process = 40
    for customer in range(1, 2 * per_process + 1):
        make_drifting_customer(engine, customer, drift="2.00")
    go = tmp_path / "go"
    url = db_url.render_as_string(hide_password=False)
    workers = [subprocess.Popen([sys.executable, "-c", _WORKER, url, str(first), str(per_process), str(go)],
                                stderr=subprocess.PIPE, text=True)
               for first in (1, per_process + 1)]
    time.sleep(1.5)  # both processes are up and waiting
    go.touch()
    for worker in workers:
        _, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
    with reading(engine) as conn:
        report = verify_chain(conn)
        actors = conn.execute(text("select actor, count(*) from reconciler.audit_log group by actor")).all()
        interleaved = conn.execute(text("""select count(*) from (
            select actor, lag(actor) over (order by seq) as before from reconciler.audit_log) s
            where actor <> before""")).scalar_one()
    assert report.intact, report.broken
    assert report.length == 4 * per_process
    assert {a.actor: a.count for a in actors} == {"process 1": 2 * per_process,
                                                  f"process {per_process + 1}": 2 * per_process}
    assert interleaved > 1  # the two writers really were concurrent


def test_engine_fixture_database_is_fresh(engine: Engine) -> None:
    """Each test's database starts with an empty chain at the genesis hash."""
    with engine.connect() as conn:
        head = read_head(conn)
    assert head.length == 0 and head.hash == "0" * 64
    assert make_engine  # imported for the worker's sake
