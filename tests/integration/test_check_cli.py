"""``reconciler check CUSTOMER_ID [--json]``: exit 0 when the balance agrees with the ledger, 1 when it drifts,
2 for an unknown customer; JSON carries decimals as strings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import URL
from typer.testing import CliRunner

from reconciler.cli.app import app
from reconciler.db import make_engine
from tests.factories import make_customer, post_entry

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def ledger(database_env: URL) -> Iterator[Engine]:
    """Customer 1 agrees with its ledger; customer 2's balance is 12.50 above it; customer 3 is 0.01 off."""
    engine = make_engine(database_env)
    make_customer(engine, 1, "30.00")
    post_entry(engine, 1, "10.00")
    post_entry(engine, 1, "20.00")
    make_customer(engine, 2, "62.50")
    post_entry(engine, 2, "50.00")
    make_customer(engine, 3, "4.99")
    post_entry(engine, 3, "5.00")
    yield engine
    engine.dispose()


def invoke(*args: str) -> tuple[int, str, str]:
    import reconciler.cli.check_commands  # noqa: F401  (registers the command)

    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_consistent_customer_exits_0_with_json(ledger: Engine) -> None:
    """A balance equal to the ledger sum exits 0 and its JSON says ok with exact decimal strings."""
    code, out, _ = invoke("check", "1", "--json")
    assert code == 0
    assert json.loads(out) == {
        "customer_id": 1, "stored_balance": "30.00", "ledger_sum": "30.00", "drift": "0.00",
        "direction": "equal", "entry_count": 2, "tolerance": "0.01", "ok": True, "status": "ok",
        "next_step": "nothing to do: the stored balance agrees with the ledger",
    }


def test_drifting_customer_exits_1_and_says_what_to_do(ledger: Engine) -> None:
    """A balance 12.50 above the ledger exits 1; the text names stored, sum, drift with direction and the fix."""
    code, out, _ = invoke("check", "2")
    assert code == 1
    assert "stored balance  62.50" in out
    assert "ledger sum      50.00  (1 entry)" in out
    assert "the stored balance is 12.50 above the ledger sum" in out
    assert "DRIFTING: |drift| 12.50 > tolerance 0.01" in out
    assert "reconciler run --customer-ids 2" in out
    code, out, _ = invoke("check", "2", "--json")
    payload = json.loads(out)
    assert code == 1
    assert (payload["drift"], payload["direction"], payload["ok"], payload["status"]) == (
        "12.50", "above", False, "drifting")


def test_tolerance_is_strict(ledger: Engine) -> None:
    """A drift of exactly the tolerance (0.01 below) is ok; with --tolerance 0 it is drifting."""
    code, out, _ = invoke("check", "3", "--json")
    assert code == 0 and json.loads(out)["direction"] == "below"
    code, out, _ = invoke("check", "3", "--json", "--tolerance", "0")
    assert code == 1 and json.loads(out)["drift"] == "-0.01"


def test_unknown_customer_exits_2_with_a_named_error(ledger: Engine) -> None:
    """An id with no customer exits 2 and says so (JSON too); a bad tolerance is a usage error."""
    code, out, err = invoke("check", "404")
    assert code == 2 and "customer 404 does not exist" in err
    code, out, _ = invoke("check", "404", "--json")
    assert code == 2 and json.loads(out)["error"] == "customer_not_found"
    code, _, err = invoke("check", "1", "--tolerance", "0.001")
    assert code == 2 and "--tolerance" in err


def test_console_script_exit_codes(ledger: Engine, database_env: URL) -> None:
    """The installed `reconciler check` returns 0, 1 and 2 as documented."""
    env = {**os.environ, "RECONCILER_DATABASE_URL": database_env.render_as_string(hide_password=False)}
    script = Path(sys.executable).parent / "reconciler"
    codes = [subprocess.run([str(script), "check", cid], env=env, cwd=ROOT, capture_output=True, text=True,
                            check=False).returncode for cid in ("1", "2", "404")]
    assert codes == [0, 1, 2]


def test_check_reads_what_the_core_reads(ledger: Engine, database_env: URL) -> None:
    """The CLI's psycopg-only check gives the same figures and verdict as BalanceManager.validate_balance."""
    from decimal import Decimal

    from reconciler.balance_check import check_balance, ledger_conninfo
    from reconciler.balances import BalanceManager

    manager = BalanceManager(ledger)
    for customer_id in (1, 2, 3):
        core = manager.validate_balance(customer_id, tolerance=Decimal("0.01"))
        light = check_balance(ledger_conninfo(), customer_id, Decimal("0.01"))
        assert (light.stored_balance, light.ledger_sum, light.drift, light.ok, light.entry_count) == (
            core.stored_balance, core.ledger_sum, core.drift, core.ok, core.entry_count)


def test_check_imports_neither_sqlalchemy_nor_the_core(ledger: Engine, database_env: URL) -> None:
    """`reconciler check` and `reconciler --help` start without SQLAlchemy, the balance core or rich."""
    probe = ("import sys, runpy\n"
             "sys.argv = ['reconciler'] + sys.argv[1:]\n"
             "try:\n    runpy.run_module('reconciler', run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             "heavy = sorted(m for m in ('sqlalchemy', 'reconciler.balances', 'rich', 'great_expectations',"
             " 'matplotlib', 'pandas') if m in sys.modules)\n"
             "print('HEAVY', heavy, file=sys.stderr)\n")
    for args in (["--help"], ["check", "1", "--json"]):
        done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, cwd=ROOT,
                              env=os.environ.copy(), check=False)
        assert "HEAVY []" in done.stderr, (args, done.stderr[-2000:])
