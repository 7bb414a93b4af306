"""Airflow for the DAG tests: its own AIRFLOW_HOME, the repo's dags/ folder, no examples, and its metadata
database in a database of its own on the session's test PostgreSQL (never the ledger's database).

Airflow reads its configuration when it is first imported, so the settings below are made before any test
imports it; the metadata URL is only known once the test server runs, so :func:`airflow_db` sets it and
(re)configures Airflow's ORM before the first DAG is loaded. Test modules import airflow inside tests only.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql
from sqlalchemy.engine import URL

from tests.fix_db import _admin

REPO = Path(__file__).resolve().parents[2]
DAGS_FOLDER = REPO / "dags"
AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="reconciler-airflow-"))
LEDGER_POOL_SLOTS = 4

os.environ.update({
    "AIRFLOW_HOME": str(AIRFLOW_HOME),
    "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
    "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
    # Failing tasks are retried at once (the production delay is 30 s, doubling).
    "RECONCILER_RETRY_DELAY_SECONDS": "0",
})
for _name in ("AIRFLOW_CONN_LEDGER_DB", "AIRFLOW_CONN_RECONCILER_ALERTS", "RECONCILER_SCHEDULE"):
    os.environ.pop(_name, None)


@pytest.fixture(scope="session")
def airflow_db(server_url: URL) -> Iterator[URL]:
    """A migrated Airflow metadata database (with the ``ledger_db`` pool), configured for this process."""
    name = f"airflow_{os.getpid()}"
    _admin(server_url, sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
    _admin(server_url, sql.SQL("create database {}").format(sql.Identifier(name)))
    url = server_url.set(database=name)
    os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = url.render_as_string(hide_password=False)
    logging.getLogger("pgserver").setLevel(logging.WARNING)

    from airflow import settings
    from airflow.configuration import conf

    # configparser interpolates '%': the URL's percent-escapes (the socket folder) are doubled for it.
    conf.set("database", "sql_alchemy_conn", os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].replace("%", "%%"))
    settings.configure_vars()
    settings.reconfigure_orm()

    from airflow.models.pool import Pool
    from airflow.utils.db import initdb

    initdb()
    Pool.create_or_update_pool("ledger_db", LEDGER_POOL_SLOTS, "caps concurrent load on the ledger database",
                               include_deferred=False)
    yield url
    settings.dispose_orm()
    _admin(server_url, sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def dagbag(airflow_db: URL) -> Any:
    """The repo's dags/ folder parsed once, as the DAG processor parses it."""
    from airflow.dag_processing.dagbag import BundleDagBag

    return BundleDagBag(dag_folder=DAGS_FOLDER, bundle_path=DAGS_FOLDER, bundle_name="dags-folder",
                        known_pools={"ledger_db", "default_pool"})


def airflow_uri(url: URL) -> str:
    """``url`` in the form an ``AIRFLOW_CONN_*`` variable takes (plain ``postgresql://``)."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)
