"""Secrets never leak: distinctive passwords in the write URL, the read URL and the alert channels appear in
no output, file, stored row or log that a run and its commands produce."""

from __future__ import annotations

import json
import logging
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL
from typer.testing import CliRunner

from reconciler.alerts import alert_for_summary
from reconciler.cli import app
from reconciler.pipeline import load_summary
from reconciler.roles import OPERATOR, READER
from tests.factories import make_drifting_customer
from tests.fix_roles import MakeLogin
from tests.fix_secrets import READ_PASSWORD, WRITE_PASSWORD, leaks

runner = CliRunner()

def files_under(*folders: Path) -> list[str]:
    """Every file under ``folders`` as text (reports, CSV, summary.json, Data Docs)."""
    texts = []
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            texts.append(path.read_bytes().decode("utf-8", errors="replace"))
    assert texts, f"nothing was written under {folders}"
    return texts


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.slow
def test_passwords_in_the_database_urls_appear_nowhere(roles: Engine, make_login: MakeLogin, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch, real_steps: None,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """A full run with the write URL as an operator and the read URL as a reader, both with distinctive
    passwords, then every command: nothing they print (human or --json, errors included), write (report,
    tasks.csv, summary.json, Data Docs) or store (runs.params, outcome, audit rows, quality results) or log
    contains a password."""
    caplog.set_level(logging.DEBUG, logger="reconciler")
    for customer in range(1, 9):
        make_drifting_customer(roles, customer, drift={2: "3.00", 5: "400.00"}.get(customer, "0.00"))
    write_url = make_login(OPERATOR, password=WRITE_PASSWORD)
    read_url = make_login(READER, password=READ_PASSWORD)
    home = tmp_path / "home"
    monkeypatch.setenv("RECONCILER_HOME", str(home))
    monkeypatch.setenv("RECONCILER_DATABASE_URL", write_url.render_as_string(hide_password=False))
    monkeypatch.setenv("RECONCILER_READ_DATABASE_URL", read_url.render_as_string(hide_password=False))
    outputs: list[str] = []

    def command(*args: str) -> tuple[int, str, str]:
        code, out, err = invoke(*args)
        outputs.extend([out, err])
        return code, out, err

    code, out, err = command("run", "--json", "--max-drift-ratio", "1")
    assert code == 1, err
    run_id = json.loads(out)["run_id"]
    command("run", "--max-drift-ratio", "1")
    command("report", "--out", str(tmp_path / "report"))
    command("quality", "--json")
    command("audit", "verify", "--json")
    command("audit", "verify")
    command("tasks", "list", "--json")
    task_id = json.loads(command("tasks", "list", "--status", "needs_review", "--json")[1])["tasks"][0]["id"]
    command("tasks", "resolve", str(task_id), "--action", "correct", "--by", "alice", "--note", "checked")
    command("check", "2", "--json")
    command("db", "url")
    # Errors: a database that does not exist, on the write URL and on the read URL; a wrong scheme.
    monkeypatch.setenv("RECONCILER_DATABASE_URL",
                       write_url.set(database="no_such_db").render_as_string(hide_password=False))
    assert command("run", "--json")[0] == 3
    assert command("report")[0] == 3
    monkeypatch.setenv("RECONCILER_DATABASE_URL", write_url.render_as_string(hide_password=False))
    monkeypatch.setenv("RECONCILER_READ_DATABASE_URL",
                       read_url.set(database="no_such_db").render_as_string(hide_password=False))
    assert command("run", "--json")[0] == 3
    assert command("audit", "verify", "--json")[0] == 3
    monkeypatch.setenv("RECONCILER_READ_DATABASE_URL", f"mysql://reader:{READ_PASSWORD}@db/ledger")
    assert command("audit", "verify")[0] != 0

    with roles.connect() as conn:
        stored = [json.dumps(row, default=str) for row in conn.execute(text("""
            select params, outcome, error from reconciler.runs
            union all select resolution, evidence, null from reconciler.tasks
            union all select details, null, null from reconciler.quality_results
            union all select to_jsonb(body), null, null from reconciler.audit_log""")).all()]
        summary = load_summary(roles, run_id)
    alert = alert_for_summary(summary, drift_above=Decimal("1.00"))
    assert alert is not None
    texts = [*outputs, *files_under(home, tmp_path / "report"), *stored, caplog.text,
             json.dumps(alert.to_json())]
    assert any("data_docs" in t or "Data Docs" in t for t in texts)  # Data Docs were among the files read
    assert leaks(texts) == []


def test_a_password_in_an_unreachable_url_is_masked(monkeypatch: pytest.MonkeyPatch, db_url: URL) -> None:
    """The one line for an unreachable database names it with the password masked."""
    monkeypatch.setenv("RECONCILER_DATABASE_URL", db_url.set(username="nobody", password=WRITE_PASSWORD,
                                                             query={"host": "/nonexistent"})
                       .render_as_string(hide_password=False))
    code, out, err = invoke("run", "--json")
    assert code == 3 and "***" in err
    assert leaks([out, err]) == []
