"""Database fixtures: one PostgreSQL server per session, one migrated template, a fresh database per test.

The server is ``RECONCILER_TEST_DATABASE_URL`` when set (any database on it; the tests create their
own and drop them), else an embedded PostgreSQL started for the session. A missing server is a loud
error, never a skip. Each test gets ``CREATE DATABASE ... TEMPLATE`` of the migrated template: cheap,
and real commits across connections stay inside that test.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import Engine
from sqlalchemy.engine import URL, make_url

from reconciler import migrate
from reconciler.db import make_engine, normalise_url

TEST_URL_ENV = "RECONCILER_TEST_DATABASE_URL"
_counter = itertools.count()


def _libpq(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _admin(url: URL, statement: sql.Composable) -> None:
    with psycopg.connect(_libpq(url.set(database="postgres")), autocommit=True) as conn:
        conn.execute(statement)


@pytest.fixture(scope="session")
def server_url() -> Iterator[URL]:
    """A URL on the session's PostgreSQL server (its database part is replaced per use)."""
    configured = os.environ.get(TEST_URL_ENV, "").strip()
    if configured:
        yield normalise_url(make_url(configured))
        return
    import logging

    logging.getLogger("pgserver").setLevel(logging.WARNING)
    import pgserver

    pgdata = Path(tempfile.mkdtemp(prefix="reconciler-pg-"))
    server = pgserver.get_server(pgdata, cleanup_mode="delete")
    socket_path = server.get_postmaster_info().socket_path
    assert socket_path is not None
    yield URL.create("postgresql+psycopg", username="postgres", host="localhost", database="postgres",
                     query={"host": str(socket_path.parent)})
    server.cleanup()


@pytest.fixture(scope="session")
def template_url(server_url: URL) -> Iterator[URL]:
    """A database migrated to head, used only as a template for per-test databases."""
    name = f"reconciler_tpl_{os.getpid()}"
    _admin(server_url, sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
    _admin(server_url, sql.SQL("create database {}").format(sql.Identifier(name)))
    url = server_url.set(database=name)
    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    yield url
    _admin(server_url, sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


def create_database(server_url: URL, template: URL | None) -> URL:
    """Create a fresh database (a copy of ``template`` when given) and return its URL."""
    name = f"reconciler_t_{os.getpid()}_{next(_counter)}"
    statement = sql.SQL("create database {}").format(sql.Identifier(name))
    if template is not None:
        statement = sql.SQL("create database {} template {}").format(
            sql.Identifier(name), sql.Identifier(template.database or ""))
    _admin(server_url, statement)
    return server_url.set(database=name)


def drop_database(url: URL) -> None:
    _admin(url, sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(url.database or "")))


@pytest.fixture
def db_url(server_url: URL, template_url: URL) -> Iterator[URL]:
    """A fresh migrated database for this test only."""
    url = create_database(server_url, template_url)
    yield url
    drop_database(url)


@pytest.fixture
def empty_db_url(server_url: URL) -> Iterator[URL]:
    """A fresh database with no tables at all (for migration and adoption tests)."""
    url = create_database(server_url, None)
    yield url
    drop_database(url)


@pytest.fixture
def engine(db_url: URL) -> Iterator[Engine]:
    """An engine on this test's own migrated database."""
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def database_env(db_url: URL, monkeypatch: pytest.MonkeyPatch) -> URL:
    """Point ``RECONCILER_DATABASE_URL`` at this test's database, for CLI tests."""
    monkeypatch.setenv("RECONCILER_DATABASE_URL", db_url.render_as_string(hide_password=False))
    return db_url
