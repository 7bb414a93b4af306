"""The Typer application objects and the helpers every command shares (exit codes, JSON, engine)."""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from enum import IntEnum, StrEnum
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:  # SQLAlchemy is imported by the commands that reach the database, not at start-up
    from sqlalchemy import Engine

#: Shown at the end of `reconciler --help` (DESIGN.md's public exit codes).
EXIT_CODES_HELP = ("Exit codes: 0 clean; 1 unresolved drift remains; 2 usage or input error (nothing written); "
                   "3 run failed or halted, or the database is unreachable.")

#: Plain help text: typer's rich formatting imports rich (about 0.2 s) and renders slowly; ``--help`` stays
#: under 0.3 s without it (bench/README.md, CLI start-up).
_PLAIN: dict[str, Any] = {"rich_markup_mode": None, "pretty_exceptions_enable": False}
app = typer.Typer(no_args_is_help=True, add_completion=False, **_PLAIN,
                  help="Find, explain and correct drift between cached balances and the ledger.",
                  epilog=EXIT_CODES_HELP)
db_app = typer.Typer(no_args_is_help=True, **_PLAIN, help="The ledger database: migrations, embedded server.")
demo_app = typer.Typer(no_args_is_help=True, **_PLAIN, help="Demo data with planted drift.")
tasks_app = typer.Typer(no_args_is_help=True, **_PLAIN, help="Reconciliation tasks: list and resolve.")
audit_app = typer.Typer(no_args_is_help=True, **_PLAIN, help="The hash-chained audit trail: verify it.")
app.add_typer(db_app, name="db")
app.add_typer(demo_app, name="demo")
app.add_typer(tasks_app, name="tasks")
app.add_typer(audit_app, name="audit")


class ExitCode(IntEnum):
    """The CLI's public exit codes (DESIGN.md)."""

    CLEAN = 0
    DRIFT_REMAINS = 1
    USAGE = 2
    FAILED = 3


class Policy(StrEnum):
    """How a correction is made (``--policy``): typer lists the members in ``--help``."""

    LEDGER = "ledger"
    BALANCE = "balance"


class Action(StrEnum):
    """What ``tasks resolve`` does with a task (``--action``)."""

    CORRECT = "correct"
    DISMISS = "dismiss"


class TaskStatus(StrEnum):
    """A task's status (``tasks list --status``); the same values as ``reconciler.schema.TASK_STATUSES``."""

    OPEN = "open"
    NEEDS_REVIEW = "needs_review"
    CORRECTED = "corrected"
    DISMISSED = "dismissed"


def package_version() -> str:
    """The installed ``reconciler`` distribution's version."""
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        return version("reconciler")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"reconciler {package_version()}")
        raise typer.Exit(int(ExitCode.CLEAN))


@app.callback()
def main_options(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Find, explain and correct drift between cached balances and the ledger."""


def json_default(value: object) -> Any:
    """Decimals as strings (exact), datetimes as ISO 8601."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def emit_json(payload: object) -> None:
    """Print exactly one JSON object on stdout."""
    sys.stdout.write(json.dumps(payload, default=json_default, sort_keys=True) + "\n")


def fail(message: str, code: ExitCode = ExitCode.USAGE) -> NoReturn:
    """Print ``message`` on stderr and exit with ``code``; nothing has been written."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(int(code))


def run_or_latest(engine: Engine, run: int | None, what: str) -> int:
    """``run`` when given, else the latest run's id; exits 2 when there is no run to ``what`` yet."""
    if run is not None:
        return run
    from sqlalchemy import select  # noqa: PLC0415

    from reconciler.schema import runs  # noqa: PLC0415

    with engine.connect() as conn:
        latest = conn.execute(select(runs.c.id).order_by(runs.c.id.desc()).limit(1)).scalar()
    if latest is None:
        fail(f"there is no run to {what} yet; start one with `reconciler run`", ExitCode.USAGE)
    return int(latest)


@contextmanager
def exits_when_database_lost(engine: Engine, doing: str) -> Iterator[None]:
    """Turn a database that went away inside the block into ONE line on stderr and exit 3 (no traceback):
    what was lost, which database (without its password), and that rerunning is safe."""
    try:
        yield
    except Exception as exc:
        from reconciler.db import database_lost  # noqa: PLC0415

        lost = database_lost(exc, engine.url, doing=doing)
        if lost is None:
            raise
        fail(str(lost), ExitCode.FAILED)


@contextmanager
def database_command(doing: str) -> Iterator[tuple[Engine, Engine | None]]:
    """The engines of one command, ``(engine, read_engine)`` (see :func:`open_read_engine`), disposed at the end,
    with the command's exit codes: the database unreachable or lost while ``doing`` exits 3 in one line, a
    :class:`ReconcilerError` (bad input, an unknown run) exits 2 with its message."""
    from reconciler.errors import DatabaseUnavailableError, ReconcilerError  # noqa: PLC0415

    try:
        engine = open_engine()
        read_engine = open_read_engine()
    except DatabaseUnavailableError as exc:
        fail(str(exc), ExitCode.FAILED)
    try:
        with exits_when_database_lost(engine, doing):
            yield engine, read_engine
    except DatabaseUnavailableError as exc:
        fail(str(exc), ExitCode.FAILED)
    except ReconcilerError as exc:
        fail(str(exc), ExitCode.USAGE)
    finally:
        engine.dispose()
        if read_engine is not None:
            read_engine.dispose()


def open_engine(*, pool_size: int | None = None) -> Engine:
    """The ledger engine for a command (``RECONCILER_DATABASE_URL`` or the embedded database); ``pool_size``
    raises the pool above its default (never lowers it)."""
    from reconciler.db import DEFAULT_POOL_SIZE, make_engine  # noqa: PLC0415

    return make_engine(pool_size=max(pool_size, DEFAULT_POOL_SIZE)) if pool_size else make_engine()


def open_read_engine() -> Engine | None:
    """The engine for read-only steps when ``RECONCILER_READ_DATABASE_URL`` is set (every transaction READ ONLY),
    else None: those steps then read the primary, in READ ONLY transactions too."""
    from reconciler.config import configured_read_database_url  # noqa: PLC0415
    from reconciler.db import make_read_engine  # noqa: PLC0415

    configured = configured_read_database_url()
    return make_read_engine(configured) if configured else None
