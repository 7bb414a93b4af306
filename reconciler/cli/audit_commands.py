"""``reconciler audit verify``: recompute every link of the hash-chained audit trail.

Exit codes: 0 the chain is intact (its length and head hash are printed), 1 a link is broken (the first
broken row is named with its expected and actual hash), 2 bad input (e.g. a database without the audit
trail), 3 database unreachable.
"""

from __future__ import annotations

from typing import Annotated

import typer

from reconciler.cli.app import (
    ExitCode,
    audit_app,
    emit_json,
    exits_when_database_lost,
    fail,
    open_engine,
    open_read_engine,
)
from reconciler.errors import DatabaseUnavailableError


@audit_app.command("verify")
def verify(json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False) -> None:
    """Check that no audit row was edited, removed or reordered (reads only; on the read URL when set)."""
    from sqlalchemy.exc import ProgrammingError  # noqa: PLC0415

    from reconciler.audit import verify_chain  # noqa: PLC0415
    from reconciler.db import reading  # noqa: PLC0415

    try:
        engine = open_read_engine() or open_engine()
    except DatabaseUnavailableError as exc:
        fail(str(exc), ExitCode.FAILED)
    try:
        with exits_when_database_lost(engine, "verifying the audit trail"), reading(engine) as conn:
            report = verify_chain(conn)
    except ProgrammingError as exc:
        if getattr(exc.orig, "sqlstate", None) in ("42P01", "42501"):  # no such table / no privilege
            fail("this database has no readable audit trail (reconciler.audit_log): run `reconciler db upgrade`, "
                 "and read it as a member of reconciler_reader", ExitCode.USAGE)
        raise
    finally:
        engine.dispose()
    if json_output:
        emit_json(report.to_json())
    elif report.broken is None:
        typer.echo(f"audit trail intact: {report.length} rows, head hash {report.head_hash}")
    else:
        b = report.broken
        typer.echo(f"audit trail BROKEN at row {b.seq}: {b.problem}; expected hash {b.expected}, actual {b.actual} "
                   f"({report.length} rows before it are intact)")
    raise typer.Exit(int(ExitCode.CLEAN if report.intact else ExitCode.DRIFT_REMAINS))
