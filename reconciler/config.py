"""Where the product finds its database and keeps its files; read from the environment, nothing else."""

from __future__ import annotations

import os
from pathlib import Path

DATABASE_URL_ENV = "RECONCILER_DATABASE_URL"
#: Where the read-only steps read (a replica, or the primary with a read-only login); unset: the primary.
READ_DATABASE_URL_ENV = "RECONCILER_READ_DATABASE_URL"
HOME_ENV = "RECONCILER_HOME"
EMBEDDED_DATABASE = "ledger"


def home_dir() -> Path:
    """The folder for the embedded database and reports: ``$RECONCILER_HOME`` or ``./.reconciler``."""
    configured = os.environ.get(HOME_ENV)
    return Path(configured).resolve() if configured else (Path.cwd() / ".reconciler").resolve()


def configured_database_url() -> str | None:
    """The database URL the user set, or None to use the embedded PostgreSQL."""
    url = os.environ.get(DATABASE_URL_ENV, "").strip()
    return url or None


def configured_read_database_url() -> str | None:
    """The read-only database URL the user set (``RECONCILER_READ_DATABASE_URL``), or None to read the primary."""
    url = os.environ.get(READ_DATABASE_URL_ENV, "").strip()
    return url or None


def reports_dir() -> Path:
    return home_dir() / "reports"
