"""The embedded PostgreSQL (pgserver) under ``$RECONCILER_HOME/pgdata``, started on demand, without SQLAlchemy.

Invariant: this module imports neither SQLAlchemy nor pgserver at import time, so a command that only needs
a libpq connection string (``reconciler check``) pays for neither; :mod:`reconciler.db` builds its URLs on it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import psycopg
from psycopg import sql

from reconciler.config import EMBEDDED_DATABASE, home_dir


def prepare_runtime_dir(home: Path) -> None:
    """pgserver picks its lock and socket folder at import time from XDG_RUNTIME_DIR and warns (an error
    under -W error) unless that folder is private; give it one of ours."""
    if os.environ.get("XDG_RUNTIME_DIR") and Path(os.environ["XDG_RUNTIME_DIR"]).is_dir():
        return
    runtime = home / "run"
    runtime.mkdir(parents=True, exist_ok=True, mode=0o700)
    runtime.chmod(0o700)
    os.environ["XDG_RUNTIME_DIR"] = str(runtime)


def pgdata_dir(home: Path | None = None) -> Path:
    return (home or home_dir()) / "pgdata"


def start_server(home: Path | None = None) -> Path:
    """Start (or attach to) the embedded PostgreSQL and return the folder of its Unix socket."""
    home = home or home_dir()
    home.mkdir(parents=True, exist_ok=True)
    prepare_runtime_dir(home)
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    import pgserver  # noqa: PLC0415  (heavy, and needs XDG_RUNTIME_DIR set first)

    server = pgserver.get_server(pgdata_dir(home), cleanup_mode=None)
    info = pgserver.utils.PostmasterInfo.read_from_pgdata(server.pgdata)
    if info is None or not info.is_running():
        # pgserver caches one handle per folder for the life of the process and never restarts its server:
        # a long-lived process (an Airflow worker, a service) must bring a stopped server back itself.
        with server._lock:
            server.ensure_postgres_running()
    socket_path = server.get_postmaster_info().socket_path
    assert socket_path is not None  # pgserver always listens on a Unix socket here
    return Path(socket_path.parent)


def socket_conninfo(socket_dir: Path, database: str) -> str:
    """A libpq connection string for ``database`` on the embedded server's socket."""
    return psycopg.conninfo.make_conninfo(host=str(socket_dir), user="postgres", dbname=database)


def ensure_database_at(conninfo: str, name: str) -> None:
    """Create database ``name`` on the server of ``conninfo`` (connecting to ``postgres``) when missing."""
    admin = psycopg.conninfo.make_conninfo(conninfo, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))


def running_socket_dir(home: Path | None = None) -> Path | None:
    """The socket folder of the embedded server when ``postmaster.pid`` says it is up and ready (its process
    alive, its socket present), read without importing pgserver; None otherwise."""
    try:
        lines = (pgdata_dir(home) / "postmaster.pid").read_text().splitlines()
        pid, port, socket_dir, status = int(lines[0]), lines[3].strip(), Path(lines[4].strip()), lines[7].strip()
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None
    return socket_dir if status == "ready" and (socket_dir / f".s.PGSQL.{port}").exists() else None


def embedded_conninfo(home: Path | None = None, database: str = EMBEDDED_DATABASE) -> str:
    """A libpq connection string for ``database`` on the embedded server. When the server already runs this
    reads its ``postmaster.pid`` (no pgserver import, no extra connection); otherwise it starts the server and
    creates ``database`` when missing."""
    running = running_socket_dir(home)
    if running is not None:
        return socket_conninfo(running, database)
    conninfo = socket_conninfo(start_server(home), database)
    ensure_database_at(conninfo, database)
    return conninfo
