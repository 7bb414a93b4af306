"""The command line: `reconciler run` and `reconciler tasks ...` with their exit codes, JSON and messages."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL
from typer.testing import CliRunner

from reconciler.cli import app
from reconciler.db import make_engine
from tests.factories import cached_balance, ledger_sum, make_customer, post_entry, set_cached_balance

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("quick_quality_and_report")


@pytest.fixture
def ledger(database_env: URL) -> Iterator[Engine]:
    """Customers 1..20 on the CLI's database: 4 drifts +2.00, 9 drifts -300.00 (beyond the limit)."""
    engine = make_engine(database_env)
    for customer_id in range(1, 21):
        make_customer(engine, customer_id, "50.00")
        post_entry(engine, customer_id, "50.00", balance_after="50.00")
    set_cached_balance(engine, 4, "52.00")
    set_cached_balance(engine, 9, "-250.00")
    yield engine
    engine.dispose()


def state(engine: Engine) -> tuple[int, ...]:
    """Everything a command could write: runs, tasks, findings, entries, reconciliations, sum of balances."""
    with engine.connect() as conn:
        row = conn.execute(text("""
            select (select count(*) from reconciler.runs), (select count(*) from reconciler.tasks),
                   (select count(*) from reconciler.findings), (select count(*) from customer_ledger_entries),
                   (select count(*) from reconciler.balance_reconciliations),
                   (select coalesce(sum(balance), 0) * 100 from customers)""")).one()
    return tuple(int(value) for value in row)


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_run_json_prints_one_object_with_the_documented_fields(ledger: Engine) -> None:
    """`run --json`: one JSON object, decimals as strings; exit 1 because the large drift awaits review."""
    code, out, err = invoke("run", "--json", "--max-drift-ratio", "1", "--chunk-size", "7")
    assert code == 1, err
    payload = json.loads(out)
    assert {key: payload[key] for key in ("status", "customers_checked", "drift_count", "corrected",
                                          "needs_review", "open", "total_abs_drift")} == {
        "status": "succeeded", "customers_checked": 20, "drift_count": 2, "corrected": 1, "needs_review": 1,
        "open": 0, "total_abs_drift": "302.00"}
    assert isinstance(payload["run_id"], int)
    assert cached_balance(ledger, 4) == ledger_sum(ledger, 4)
    assert "chunks 3/3" in err  # plain progress lines when stderr is not a terminal


def test_exit_codes_clean_drift_remaining_and_halted(ledger: Engine) -> None:
    """0 when nothing is left drifting, 1 when drift remains (dry run), 3 when the run halts."""
    assert invoke("run", "--dry-run", "--max-drift-ratio", "1")[0] == 1
    code, out, _ = invoke("run", "--json")  # 2 of 20 = 0.1 > 0.05
    assert code == 3 and json.loads(out)["status"] == "halted"
    assert invoke("run", "--customer-ids", "1,2,3", "--json")[0] == 0
    assert invoke("run", "--max-drift-ratio", "1", "--auto-correct-limit", "1000", "--policy", "balance")[0] == 0
    assert invoke("run", "--json")[0] == 0  # all corrected: clean
    assert cached_balance(ledger, 9) == ledger_sum(ledger, 9) == Decimal("-250.00")


def test_human_output_shows_the_summary_and_the_explained_drifts(ledger: Engine) -> None:
    """Without --json: a summary table, the largest drifts with their probable cause, and what to do next."""
    code, out, _ = invoke("run", "--dry-run", "--max-drift-ratio", "1")
    assert code == 1
    assert "customers checked" in out and "Largest drifts" in out
    assert "-300.00" in out and "2.00" in out
    assert "reconciler tasks resolve" in out


BAD_RUN_INPUTS = [
    (["--tolerance", "abc"], "--tolerance", "abc"),
    (["--tolerance", "-0.01"], "--tolerance", "-0.01"),
    (["--tolerance", "0.001"], "--tolerance", "0.001"),
    (["--chunk-size", "0"], "--chunk-size", "0"),
    (["--chunk-size", "many"], "--chunk-size", "many"),
    (["--from-id", "10", "--to-id", "5"], "--from-id", "10"),
    (["--from-id", "x"], "--from-id", "x"),
    (["--customer-ids", "1,a"], "--customer-ids", "'a'"),
    (["--customer-ids", "1,,2"], "--customer-ids", "1,,2"),
    (["--customer-ids", ""], "--customer-ids", "''"),
    (["--customer-ids", "3,999"], "--customer-ids", "999"),
    (["--customer-ids", "1", "--from-id", "1"], "--customer-ids", "--from-id"),
    (["--policy", "cash"], "--policy", "cash"),
    (["--auto-correct-limit", "-1"], "--auto-correct-limit", "-1"),
    (["--auto-correct-limit", "lots"], "--auto-correct-limit", "lots"),
    (["--max-drift-ratio", "2"], "--max-drift-ratio", "2"),
    (["--max-drift-ratio", "half"], "--max-drift-ratio", "half"),
    (["--workers", "0"], "--workers", "0"),
    (["--workers", "64"], "--workers", "64"),
    (["--frobnicate"], "--frobnicate", "No such option"),
]


@pytest.mark.parametrize(("args", "option", "value"), BAD_RUN_INPUTS)
def test_bad_run_input_exits_2_and_writes_nothing(ledger: Engine, args: list[str], option: str, value: str) -> None:
    """Each bad option: exit 2, a message naming the option and the value, and no run row, task or entry."""
    before = state(ledger)
    code, _, err = invoke("run", *args)
    assert code == 2
    assert option in err and value in err
    assert state(ledger) == before


def test_tasks_list_shows_a_table_and_json(ledger: Engine) -> None:
    """`tasks list` prints a readable table; --json one object; --status and --run filter."""
    code, out, _ = invoke("run", "--json", "--max-drift-ratio", "1")
    run_id = json.loads(out)["run_id"]
    code, out, _ = invoke("tasks", "list")
    assert code == 0 and "needs_review" in out and "corrected" in out and "Tasks" in out
    code, out, _ = invoke("tasks", "list", "--status", "needs_review", "--json")
    payload = json.loads(out)
    assert code == 0 and payload["count"] == 1
    (task,) = payload["tasks"]
    assert (task["customer_id"], task["drift"], task["status"]) == (9, "-300.00", "needs_review")
    code, out, _ = invoke("tasks", "list", "--run", str(run_id), "--json")
    assert {t["customer_id"] for t in json.loads(out)["tasks"]} == {4, 9}
    assert invoke("tasks", "list", "--status", "closed")[0] == 2
    code, _, err = invoke("tasks", "list", "--run", "999")
    assert code == 2 and "run 999" in err


def test_a_reviewed_task_approved_on_the_command_line_is_corrected_and_audited(ledger: Engine) -> None:
    """`tasks resolve --action correct --by --note` corrects a needs_review task through the core, with the
    approver, the note and old/new values in the audit trail; resolving it again is exit 2."""
    invoke("run", "--max-drift-ratio", "1")
    code, out, _ = invoke("tasks", "list", "--status", "needs_review", "--json")
    task_id = json.loads(out)["tasks"][0]["id"]
    code, out, err = invoke("tasks", "resolve", str(task_id), "--action", "correct", "--by", "dana",
                            "--note", "confirmed with the bank", "--policy", "balance", "--json")
    assert code == 0, err
    payload = json.loads(out)
    assert payload["task"]["status"] == "corrected" and payload["correction"]["outcome"] == "corrected"
    event = payload["task"]["resolution"]["events"][-1]
    assert (event["by"], event["note"], event["values"]["approved_by"]) == ("dana", "confirmed with the bank", "dana")
    assert (event["values"]["old_balance"], event["values"]["new_balance"]) == ("-250.00", "-250.00")
    assert event["values"]["policy"] == "balance" and event["values"]["entry_id"] is not None
    assert ledger_sum(ledger, 9) == cached_balance(ledger, 9) == Decimal("-250.00")
    before = state(ledger)
    code, _, err = invoke("tasks", "resolve", str(task_id), "--action", "dismiss", "--by", "dana", "--note", "again")
    assert code == 2 and "already corrected" in err
    assert state(ledger) == before


def test_dismissing_on_the_command_line_changes_only_the_task(ledger: Engine) -> None:
    """`tasks resolve --action dismiss` closes the task with who and why and touches no balance or entry."""
    invoke("run", "--dry-run", "--max-drift-ratio", "1")
    code, out, _ = invoke("tasks", "list", "--status", "open", "--json")
    task_id = json.loads(out)["tasks"][0]["id"]
    with ledger.connect() as conn:
        entries = conn.execute(text("select count(*) from customer_ledger_entries")).scalar_one()
    code, out, _ = invoke("tasks", "resolve", str(task_id), "--action", "dismiss", "--by", "eve", "--note", "known")
    assert code == 0 and "dismissed" in out
    assert cached_balance(ledger, 4) == Decimal("52.00")
    with ledger.connect() as conn:
        assert conn.execute(text("select count(*) from customer_ledger_entries")).scalar_one() == entries


@pytest.mark.parametrize(("args", "expected"), [
    (["1", "--action", "fix", "--by", "a", "--note", "b"], "--action"),
    (["1", "--action", "dismiss", "--by", " ", "--note", "b"], "--by"),
    (["1", "--action", "dismiss", "--by", "a", "--note", ""], "--note"),
    (["1", "--action", "correct", "--by", "a", "--note", "b", "--policy", "cash"], "--policy"),
    (["1", "--action", "dismiss", "--note", "b"], "--by"),
    (["999", "--action", "dismiss", "--by", "a", "--note", "b"], "task 999"),
    (["x", "--action", "dismiss", "--by", "a", "--note", "b"], "TASK_ID"),
])
def test_bad_resolve_input_exits_2_and_writes_nothing(ledger: Engine, args: list[str], expected: str) -> None:
    """Each bad `tasks resolve` input: exit 2, a message naming what is wrong, nothing written."""
    invoke("run", "--dry-run", "--max-drift-ratio", "1")
    before = state(ledger)
    code, _, err = invoke("tasks", "resolve", *args)
    assert code == 2 and expected in err
    assert state(ledger) == before


def test_four_eyes_on_the_command_line(ledger: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Above the auto-correct limit, the person who triggered the run cannot approve its correction: exit 2,
    nothing written; someone else can, and --by is recorded. Below the limit the trigger may correct it."""
    monkeypatch.setenv("RECONCILER_USER", "dana")
    invoke("run", "--dry-run", "--max-drift-ratio", "1", "--auto-correct-limit", "100")
    code, out, _ = invoke("tasks", "list", "--json")
    by_customer = {t["customer_id"]: t["id"] for t in json.loads(out)["tasks"]}
    big, small = by_customer[9], by_customer[4]
    before = state(ledger)
    code, _, err = invoke("tasks", "resolve", str(big), "--action", "correct", "--by", "Dana ", "--note", "mine")
    assert code == 2 and "four eyes" in err and "'Dana '" in err
    assert state(ledger) == before
    code, out, err = invoke("tasks", "resolve", str(big), "--action", "correct", "--by", "erin", "--note", "checked",
                            "--json")
    assert code == 0, err
    event = json.loads(out)["task"]["resolution"]["events"][-1]
    assert (event["by"], event["values"]["approved_by"]) == ("erin", "erin")
    code, _, err = invoke("tasks", "resolve", str(small), "--action", "correct", "--by", "dana", "--note", "small")
    assert code == 0, err
    assert cached_balance(ledger, 4) == ledger_sum(ledger, 4)
