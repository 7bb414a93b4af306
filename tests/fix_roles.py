"""Real logins for privilege tests: each test creates its own login roles (unique names, since roles are
cluster-wide and other test databases share the server), grants them reconciler's roles, and drops them."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import Engine
from sqlalchemy.engine import URL

from reconciler.roles import apply_roles

_counter = itertools.count()
MakeLogin = Callable[..., URL]


def _admin(url: URL) -> psycopg.Connection:
    return psycopg.connect(url.set(drivername="postgresql").render_as_string(hide_password=False), autocommit=True)


@pytest.fixture
def roles(engine: Engine) -> Engine:
    """This test's database with `reconciler db roles` applied."""
    apply_roles(engine)
    return engine


@pytest.fixture
def make_login(db_url: URL) -> Iterator[MakeLogin]:
    """``make_login(*roles, password=...)``: a new LOGIN role that is a member of ``roles`` only; returns the
    test database's URL logging in as it. Every login made is dropped after the test."""
    made: list[str] = []

    def make(*member_of: str, password: str = "login-password") -> URL:
        name = f"rt_login_{os.getpid()}_{next(_counter)}"
        with _admin(db_url) as conn:
            conn.execute(sql.SQL("create role {} login password {}").format(sql.Identifier(name),
                                                                           sql.Literal(password)))
            for role in member_of:
                conn.execute(sql.SQL("grant {} to {}").format(sql.Identifier(role), sql.Identifier(name)))
        made.append(name)
        return db_url.set(username=name, password=password)

    yield make
    with _admin(db_url) as conn:
        for name in made:
            conn.execute("select pg_terminate_backend(pid) from pg_stat_activity where usename = %s", (name,))
            conn.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(name)))
