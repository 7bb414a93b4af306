"""The command line explains itself: `--version`, the exit codes and every choice appear in `--help`."""

from __future__ import annotations

from importlib.metadata import version

from typer.testing import CliRunner

from reconciler.cli import app

runner = CliRunner()


def _help(*args: str) -> str:
    result = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "220"})
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


def test_version_prints_the_installed_version() -> None:
    """`reconciler --version` prints the package's version and exits 0."""
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"reconciler {version('reconciler')}"


def test_help_lists_the_exit_codes() -> None:
    """The top-level help and `run --help` name the four public exit codes."""
    for text in (_help(), _help("run")):
        for code in ("0 clean", "1 unresolved drift remains", "2 usage or input error", "3 run failed or halted"):
            assert code in text, code
    assert "3 the correction was deferred" in _help("tasks", "resolve")


def test_choices_are_listed_in_help() -> None:
    """Policies, actions and statuses are enums, so the help lists them and a wrong one is a usage error."""
    assert "ledger|balance" in _help("run")
    assert "correct|dismiss" in _help("tasks", "resolve")
    assert "open|needs_review|corrected|dismissed" in _help("tasks", "list")
    result = runner.invoke(app, ["run", "--policy", "cash"], env={"COLUMNS": "220"})
    assert result.exit_code == 2 and "'cash' is not one of 'ledger', 'balance'" in " ".join(result.output.split())
