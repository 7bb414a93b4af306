"""``reconciler db ...``: migrations, hardening and the embedded server."""

from __future__ import annotations

from typing import Annotated

import typer

from reconciler.cli.app import ExitCode, db_app, emit_json, fail, open_engine
from reconciler.errors import DatabaseUnavailableError, ReconcilerError


@db_app.command("upgrade")
def upgrade(revision: str = typer.Argument("head", help="Target revision.")) -> None:
    """Create or adopt the ledger tables and the reconciler schema (safe to run again)."""
    from reconciler import migrate  # noqa: PLC0415

    engine = open_engine()
    migrate.upgrade(engine, revision)
    typer.echo(f"database at revision {migrate.current_revision(engine)} ({engine.url.database})")


@db_app.command("downgrade")
def downgrade(revision: str = typer.Argument(..., help="Target revision, e.g. base.")) -> None:
    """Undo migrations; adopted tables keep their rows and original columns."""
    from reconciler import migrate  # noqa: PLC0415

    engine = open_engine()
    migrate.downgrade(engine, revision)
    typer.echo(f"database at revision {migrate.current_revision(engine) or 'base'}")


@db_app.command("harden")
def harden() -> None:
    """Make an adopted ledger append-only: UPDATE/DELETE/TRUNCATE on entries refused by a trigger."""
    from reconciler import migrate  # noqa: PLC0415

    migrate.harden(open_engine())
    typer.echo("customer_ledger_entries is now append-only")


@db_app.command("roles")
def roles(json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False) -> None:
    """Create or update the NOLOGIN roles reconciler_reader, reconciler_core and reconciler_operator with exactly
    their privileges (safe to run again; run it again after `db upgrade`). Grant them to your own logins."""
    from reconciler import roles as role_store  # noqa: PLC0415

    try:
        engine = open_engine()
    except DatabaseUnavailableError as exc:
        fail(str(exc), ExitCode.FAILED)
    from sqlalchemy.exc import DBAPIError  # noqa: PLC0415

    try:
        result = role_store.apply_roles(engine)
    except ReconcilerError as exc:
        fail(str(exc), ExitCode.USAGE)
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) != "42501":  # insufficient_privilege
            raise
        fail("creating roles and granting on the ledger needs a login with CREATEROLE that owns the ledger and "
             "reconciler tables (the one that ran `db upgrade`); nothing was changed", ExitCode.USAGE)
    finally:
        engine.dispose()
    if json_output:
        emit_json(result.to_json())
        return
    for role in role_store.ROLES:
        typer.echo(f"{role} ({'created' if role in result.created else 'exists'}, NOLOGIN):")
        for grant in result.grants:
            if grant.role == role:
                typer.echo(f"  {grant.sql()}")
    typer.echo(f"grant them to your logins, e.g. GRANT {role_store.READER} TO analyst;")


@db_app.command("url")
def url() -> None:
    """Print the database URL in use (password masked)."""
    from reconciler.db import database_url, describe_url  # noqa: PLC0415

    typer.echo(describe_url(database_url()))


@db_app.command("stop")
def stop() -> None:
    """Stop the embedded PostgreSQL (a no-op when it is not running)."""
    from reconciler.db import stop_embedded  # noqa: PLC0415

    typer.echo("embedded database stopped" if stop_embedded() else "embedded database was not running")
