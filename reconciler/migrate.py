"""Schema migrations (Alembic) run programmatically on an engine, plus ``harden`` for adopted ledgers."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, text

from reconciler import append_only

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def _config(connection: object) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the database to ``revision``; safe to run again (a no-op when already there)."""
    with engine.begin() as conn:
        command.upgrade(_config(conn), revision)


def downgrade(engine: Engine, revision: str = "base") -> None:
    """Undo migrations down to ``revision``; adopted tables keep their rows and original columns."""
    with engine.begin() as conn:
        command.downgrade(_config(conn), revision)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        has_schema = conn.execute(text("select 1 from pg_namespace where nspname = 'reconciler'")).scalar()
        if not has_schema:
            return None
        context = MigrationContext.configure(conn, opts={"version_table_schema": "reconciler"})
        return context.get_current_revision()


def harden(engine: Engine) -> None:
    """Make an adopted ledger append-only too: UPDATE, DELETE and TRUNCATE on entries are refused."""
    with engine.begin() as conn:
        conn.execute(text(append_only.FUNCTION_SQL))
        conn.execute(text(append_only.TRIGGERS_SQL))
