"""``reconciler db ...``: migrations, hardening and the embedded server."""

from __future__ import annotations

import typer

from reconciler.cli.app import db_app, open_engine


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
