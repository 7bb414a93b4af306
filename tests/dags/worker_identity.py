"""Airflow's ``[core] hostname_callable`` for the Celery test's workers: two ``airflow celery worker`` processes
on ONE machine share its host name, so each reports the name it was started with (``RECONCILER_TEST_WORKER``,
the same as its ``--celery-hostname``) as the hostname of the task instances it runs. Elsewhere (compose: one
container per worker) Airflow's default, the machine's FQDN, already tells workers apart."""

from __future__ import annotations

import os
import socket

WORKER_ENV = "RECONCILER_TEST_WORKER"


def worker_hostname() -> str:
    """This worker's name, else the machine's FQDN (Airflow's default)."""
    return os.environ.get(WORKER_ENV, "").strip() or socket.getfqdn()
