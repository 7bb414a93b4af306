"""Command line ``reconciler``. Exit codes: 0 clean, 1 unresolved drift remains, 2 usage or input
error, 3 run failed or halted (also: database unreachable)."""

from __future__ import annotations

import sys

import typer

from reconciler.cli import db_commands  # noqa: F401  (registers commands)
from reconciler.cli.app import ExitCode, app
from reconciler.errors import DatabaseUnavailableError, ReconcilerError, RunFailedError

# Command modules register themselves on import; each area owns its own module.
for _module in ("demo_commands", "check_commands", "run_commands", "tasks_commands",
                "quality_commands", "report_commands", "guard_commands", "audit_commands"):
    try:
        __import__(f"reconciler.cli.{_module}")
    except ModuleNotFoundError as _missing:
        if _missing.name != f"reconciler.cli.{_module}":
            raise


def main() -> None:
    """Entry point: run the app, turning contract errors into one clear line and an exit code.

    Click handles usage errors itself (exit 2); a command's own ``typer.Exit`` passes through.
    """
    try:
        app()
    except (DatabaseUnavailableError, RunFailedError) as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(int(ExitCode.FAILED))
    except ReconcilerError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(int(ExitCode.USAGE))
    except Exception as exc:
        from reconciler.db_errors import first_line, lost_database  # noqa: PLC0415

        lost = lost_database(exc)
        if lost is None:
            raise
        typer.echo(f"error: lost the ledger database: {first_line(lost)}. Once it is back, rerunning is safe",
                   err=True)
        sys.exit(int(ExitCode.FAILED))


__all__ = ["app", "main"]
