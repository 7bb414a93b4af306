"""The Celery settings the Celery test (tests/dags/test_celery_workers.py) runs with, in the shapes
docker-compose.yml's Celery profile uses (tests/integration/test_compose.py holds the compose file to them): the
broker is Redis (``redis://HOST:6379/0``, or kombu's SQLAlchemy transport ``sqla+postgresql://...`` where no Redis
answers), the result backend is ``db+postgresql://`` on Airflow's own metadata database, and every component
reaches the api-server's execution API at ``<api-server>/execution/``. Workers run
``airflow celery worker --concurrency N``.

Also the test workers' ``[core] hostname_callable`` (:func:`worker_hostname`): two ``airflow celery worker``
processes on ONE machine share its host name, so each reports the name it was started with
(``RECONCILER_TEST_WORKER``, the same as its ``--celery-hostname``) as the hostname of the task instances it runs.
Elsewhere (compose: one container per worker) Airflow's default, the machine's FQDN, already tells them apart.
"""

from __future__ import annotations

import os
import socket

from sqlalchemy.engine import URL

#: ``airflow`` + these words start a worker (compose: ``command: celery worker --concurrency ...``).
WORKER_COMMAND = ("celery", "worker")
CONCURRENCY_FLAG = "--concurrency"
REDIS_PORT = 6379


def redis_broker(host: str) -> str:
    return f"redis://{host}:{REDIS_PORT}/0"


def sqla_broker(database: URL) -> str:
    """kombu's SQLAlchemy transport on a PostgreSQL database (its tables are created on first use)."""
    return "sqla+" + database.set(drivername="postgresql").render_as_string(hide_password=False)


def result_backend(sql_alchemy_conn: str) -> str:
    """Celery's database result backend on Airflow's metadata database (``[database] sql_alchemy_conn``, whose
    driver part is dropped: ``db+postgresql://...``)."""
    scheme, rest = sql_alchemy_conn.split("://", 1)
    if not scheme.startswith("postgresql"):
        raise ValueError(f"the metadata database is {scheme}://, not PostgreSQL")
    return f"db+postgresql://{rest}"


def execution_api_url(api_server: str) -> str:
    """Where workers run their tasks through the Task SDK (the api-server's execution API)."""
    return f"{api_server.rstrip('/')}/execution/"


def celery_environment(*, broker: str, sql_alchemy_conn: str, api_server: str) -> dict[str, str]:
    """The Celery part of every Airflow component's environment."""
    return {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sql_alchemy_conn,
        "AIRFLOW__CELERY__BROKER_URL": broker,
        "AIRFLOW__CELERY__RESULT_BACKEND": result_backend(sql_alchemy_conn),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": execution_api_url(api_server),
    }


#: The test worker's name (its ``--celery-hostname``), read by :func:`worker_hostname`.
WORKER_ENV = "RECONCILER_TEST_WORKER"
#: The ``[core] hostname_callable`` of the test workers.
HOSTNAME_CALLABLE = "tests.fix_celery.worker_hostname"


def worker_hostname() -> str:
    """This worker's name, else the machine's FQDN (Airflow's default)."""
    return os.environ.get(WORKER_ENV, "").strip() or socket.getfqdn()
