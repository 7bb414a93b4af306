"""Prepare Airflow on this machine and print the shell ``export`` lines for it (``eval "$(python ...)"``).

Airflow's metadata database is the database ``airflow`` on the embedded PostgreSQL that also holds the ledger
(``.reconciler/pgdata``; the two never share a database: both keep an ``alembic_version`` table). On first use
this migrates it and creates the pool ``ledger_db`` that caps concurrent load on the ledger; afterwards a stamp
file makes the whole step take well under a second (Airflow is not even imported).

Expects AIRFLOW_HOME, RECONCILER_HOME and the other settings of scripts/airflow-env.sh in the environment.
"""

from __future__ import annotations

import os
import secrets
import shlex
import sys
from importlib.metadata import version
from pathlib import Path

POOL = "ledger_db"
POOL_DESCRIPTION = "caps concurrent load on the ledger database"


def metadata_url() -> str:
    """Start (or attach to) the embedded PostgreSQL and return the URL of its ``airflow`` database."""
    from reconciler.db import start_embedded  # noqa: PLC0415  (starts pgserver: only when needed)

    url = start_embedded(database="airflow")
    # Airflow's config parser treats '%' specially: give the socket folder unescaped (STACK.md's form).
    return f"postgresql+psycopg://{url.username}@/{url.database}?host={url.query['host']}"


def jwt_secret(home: Path) -> str:
    """A >= 64-byte secret for Airflow's API tokens, made once and kept (private) in AIRFLOW_HOME."""
    path = home / "jwt_secret"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(64))
        path.chmod(0o600)
    return path.read_text().strip()


def stamp_text(slots: int) -> str:
    return f"apache-airflow {version('apache-airflow')}; pool {POOL} {slots}\n"


def migrate(slots: int) -> None:
    """Migrate Airflow's metadata database and create or resize the pool (imports Airflow: a few seconds).

    Airflow logs to stdout, which the shell evaluates: its output goes to stderr meanwhile."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        from airflow.models.pool import Pool  # noqa: PLC0415  (Airflow is slow to import: first run only)
        from airflow.utils.db import upgradedb  # noqa: PLC0415

        upgradedb()
        Pool.create_or_update_pool(POOL, slots, POOL_DESCRIPTION, include_deferred=False)
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def main() -> int:
    home = Path(os.environ["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    slots = int(os.environ.get("RECONCILER_POOL_SLOTS", "4"))
    exports = {
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN") or metadata_url(),
        "AIRFLOW__API_AUTH__JWT_SECRET": os.environ.get("AIRFLOW__API_AUTH__JWT_SECRET") or jwt_secret(home),
    }
    os.environ.update(exports)
    stamp = home / ".reconciler-setup"
    if not stamp.exists() or stamp.read_text() != stamp_text(slots):
        print("preparing Airflow's metadata database (first run only) ...", file=sys.stderr)
        migrate(slots)
        stamp.write_text(stamp_text(slots))
    for name, value in exports.items():
        print(f"export {name}={shlex.quote(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
