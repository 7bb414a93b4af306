"""``reconciler guard ...`` and ``reconciler writers``: the census of writers around the core, and the story of
two fake services that a run then explains and reports by name."""

from __future__ import annotations

import datetime as dt
import json
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
from tests.factories import make_customer

D = Decimal
runner = CliRunner()


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def write_as(db_url: URL, name: str, *statements: str) -> None:
    """A fake service: plain psycopg, its own application_name, each statement its own transaction."""
    dsn = db_url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, application_name=name, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


@pytest.fixture
def ledger(database_env: URL) -> Iterator[Engine]:
    """Ten customers at 100.00, every balance written by the core."""
    engine = make_engine(database_env)
    core = BalanceManager(engine)
    for customer_id in range(1, 11):
        make_customer(engine, customer_id)
        core.update_balance(customer_id, D("100.00"), kind="opening_balance")
    yield engine
    engine.dispose()


def test_guard_commands_are_idempotent_and_bad_input_exits_2(ledger: Engine) -> None:
    """Each subcommand twice gives the same status; an empty --allow or an unknown mode exits 2, changing nothing."""
    assert invoke("guard", "observe")[0] == 0
    code, out, _ = invoke("guard", "observe", "--json")
    assert code == 0 and json.loads(out)["mode"] == "observe"
    code, out, _ = invoke("guard", "enforce", "--allow", "legacy-billing", "--json")
    assert code == 0 and json.loads(out)["allow"] == ["legacy-billing"]
    assert invoke("guard", "enforce", "--allow", "")[0] == 2
    assert invoke("guard", "paranoid")[0] == 2
    code, out, _ = invoke("guard", "status", "--json")
    status = json.loads(out)
    assert code == 0 and (status["mode"], status["allow"], status["all_triggers_enabled"]) == (
        "enforce", ["legacy-billing"], True)
    assert all(t["enabled"] for t in status["triggers"]) and status["missing"] == []
    with ledger.begin() as conn:
        conn.execute(text("alter table customer_ledger_entries disable trigger reconciler_guard_entries"))
    code, out, _ = invoke("guard", "status")
    assert code == 1 and "reconciler_guard_entries on customer_ledger_entries: DISABLED" in out
    assert invoke("guard", "off")[0] == 0 and invoke("guard", "off")[0] == 0
    code, out, _ = invoke("guard", "status", "--json")
    assert code == 0 and json.loads(out)["mode"] == "off" and json.loads(out)["triggers"] == []


def test_the_census_names_each_code_path_sorted_by_money_moved(ledger: Engine, database_env: URL) -> None:
    """One row per (application, role, fingerprint) with counts, amounts, broken ledgers, first/last seen and an
    example; sorted by absolute amount; decimals as strings; --since and --run select windows."""
    assert invoke("guard", "observe")[0] == 0
    write_as(database_env, "legacy-billing",
             "update customers set balance = balance + 10.00 where id = 1",
             "update customers set balance = balance + -30.00 where id = 2")
    write_as(database_env, "support-tool",
             "insert into customer_ledger_entries (customer_id, amount, kind) values (3, 5.00, 'goodwill')")
    code, out, _ = invoke("writers", "--json")
    assert code == 0
    writers = json.loads(out)["writers"]
    assert [(w["application_name"], w["writes"], w["customers"], w["net_amount"], w["abs_amount"],
             w["broke_ledger"]) for w in writers] == [
        ("legacy-billing", 2, 2, "-20.00", "40.00", 2), ("support-tool", 1, 1, "5.00", "5.00", 1)]
    first = writers[0]
    assert first["role"] == "postgres"
    assert first["fingerprint"] == "update customers set balance = balance + ? where id = ?"
    assert first["example_statement"] == "update customers set balance = balance + -30.00 where id = 2"
    assert first["first_seen"] <= first["last_seen"]

    later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    assert json.loads(invoke("writers", "--since", later, "--json")[1])["writers"] == []
    assert invoke("writers", "--since", "yesterday")[0] == 2
    assert invoke("writers", "--run", "999")[0] == 2
    code, out, _ = invoke("writers")
    assert code == 0 and "legacy-billing (role postgres): 2 write(s)" in out and "support-tool" in out
    code, out, _ = invoke("guard", "status", "--json")
    assert json.loads(out)["bypass_writes_since_previous_run"] == 3


@pytest.mark.slow
def test_a_run_explains_and_reports_the_two_writers_by_name(ledger: Engine, database_env: URL,
                                                           tmp_path: Path) -> None:
    """Drift written by two named services is explained with the writer (application, role, time, fingerprint);
    the report's "Writers around the core" lists both with their counts and amounts."""
    from reconciler.pipeline import RunOptions, run_reconciliation

    assert invoke("guard", "observe")[0] == 0
    write_as(database_env, "legacy-billing", "update customers set balance = balance + 12.00 where id = 4")
    write_as(database_env, "support-tool",
             "insert into customer_ledger_entries (customer_id, amount, kind) values (7, -3.50, 'refund')")
    with ledger.connect() as conn:
        sources = conn.execute(text("select customer_id, source from reconciler.tasks order by customer_id")).all()
    assert [tuple(r) for r in sources] == [(4, "bypass"), (7, "bypass")]

    summary = run_reconciliation(ledger, RunOptions(max_drift_ratio=D("1"), dry_run=True),
                                 report_dir=tmp_path / "report")
    with ledger.connect() as conn:
        findings = {r.customer_id: r for r in conn.execute(text(
            "select customer_id, cause, evidence from reconciler.findings where run_id = :r"), {"r": summary.run_id})}
    assert set(findings) == {4, 7}
    written = findings[4]
    assert written.cause == "balance_written_around_ledger"
    (writer,) = written.evidence["writers"]
    assert (writer["application_name"], writer["role"], writer["operation"]) == ("legacy-billing", "postgres",
                                                                                 "UPDATE")
    assert writer["fingerprint"] == "update customers set balance = balance + ? where id = ?" and writer["at"]
    assert "legacy-billing" in written.evidence["summary"]
    assert findings[7].evidence["writers"][0]["application_name"] == "support-tool"

    folder = Path(summary.report_path or "")
    html = (folder / "report.html").read_text()
    assert "Writers around the core" in html and "legacy-billing" in html and "support-tool" in html
    data = json.loads((folder / "summary.json").read_text())["writers"]
    assert [(w["application_name"], w["writes"], w["abs_amount"]) for w in data["writers"]] == [
        ("legacy-billing", 1, "12.00"), ("support-tool", 1, "3.50")]
    assert (data["writes"], data["abs_amount"], data["guard_mode"]) == (2, "15.50", "observe")
    assert data["window"] == f"everything recorded before run {summary.run_id} started"
    code, out, _ = invoke("writers", "--run", str(summary.run_id), "--json")
    assert code == 0 and [w["application_name"] for w in json.loads(out)["writers"]] == ["legacy-billing",
                                                                                          "support-tool"]
