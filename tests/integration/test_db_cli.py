"""`reconciler db ...`: embedded server lifecycle, migrations by URL, one clear line when unreachable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import inspect
from sqlalchemy.engine import URL

from reconciler.db import make_engine

RECONCILER = [sys.executable, "-m", "reconciler"]


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RECONCILER, *args], env=env, capture_output=True, text=True, timeout=120, check=False)


def test_unreachable_database_is_one_line_without_password() -> None:
    """A URL nobody listens on gives exit 3 and one line naming host, port and database, never the password."""
    env = {**os.environ, "RECONCILER_DATABASE_URL": "postgresql://finance:s3cret-pw@127.0.0.1:1/ledger"}
    result = _run(["db", "upgrade"], env)
    assert result.returncode == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "127.0.0.1" in lines[0] and "port 1" in lines[0] and "ledger" in lines[0]
    assert "s3cret-pw" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_upgrade_through_the_cli_migrates_the_configured_database(empty_db_url: URL) -> None:
    """`db upgrade` with RECONCILER_DATABASE_URL creates the ledger tables in that database."""
    env = {**os.environ, "RECONCILER_DATABASE_URL": empty_db_url.render_as_string(hide_password=False)}
    result = _run(["db", "upgrade"], env)
    assert result.returncode == 0, result.stderr
    engine = make_engine(empty_db_url)
    try:
        assert {"customers", "customer_ledger_entries"} <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


@pytest.mark.slow
def test_embedded_database_starts_on_demand_is_reused_and_stops(tmp_path: Path) -> None:
    """With no URL set, commands start one embedded PostgreSQL under RECONCILER_HOME, later commands
    reuse it, and `db stop` stops it."""
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k != "RECONCILER_DATABASE_URL"}
    env["RECONCILER_HOME"] = str(home)
    first = _run(["db", "upgrade"], env)
    assert first.returncode == 0, first.stderr
    pid_file = home / "pgdata" / "postmaster.pid"
    assert pid_file.exists()
    server_pid = pid_file.read_text().splitlines()[0]
    second = _run(["db", "upgrade"], env)
    assert second.returncode == 0, second.stderr
    assert pid_file.read_text().splitlines()[0] == server_pid  # reused, not restarted
    stopped = _run(["db", "stop"], env)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert not pid_file.exists()
    again = _run(["db", "stop"], env)
    assert "not running" in again.stdout
