"""One statement as its own transaction on a psycopg connection: the balance core's hot path.

Invariant: a statement runs in autocommit on a connection that is checked out of the engine's pool and in no
transaction, with a cursor kept per connection and the statement prepared on the server at its first use there;
driver errors come back wrapped in SQLAlchemy's ``DBAPIError`` (``connection_invalidated`` when the connection
broke), and a broken connection is never reused. A connection kept between calls (:class:`HeldConnections`) is
found alive before anything is sent on it (:func:`reconciler.db.connection_is_alive`, no round trip), so
replacing a dead one is always safe; it is kept only while the pool has spare connections for everyone else,
and goes back to the pool transactional again, as SQLAlchemy expects.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError

from reconciler.db import connection_is_alive

log = logging.getLogger("reconciler.balances")

#: At most this many connections are kept by one manager between calls (fewer when the pool runs short).
MAX_IDLE_HELD = 32
_CURSOR_INFO_KEY = "reconciler.balances.cursor"


class Held:
    """A pooled connection kept checked out between calls, in autocommit, with its cursor."""

    __slots__ = ("conn", "cursor", "fairy", "since")

    def __init__(self, fairy: Any, conn: psycopg.Connection[Any], cursor: psycopg.Cursor[Any]) -> None:
        self.fairy, self.conn, self.cursor, self.since = fairy, conn, cursor, time.monotonic()


def release(held: Held) -> None:
    """Back to the pool, transactional again (what SQLAlchemy expects); a broken one is discarded."""
    try:
        if held.conn.broken or held.conn.closed:
            held.fairy.invalidate()
            return
        held.conn.autocommit = False
        held.fairy.close()
    except Exception:  # the pool may be disposed, the interpreter ending: the connection goes either way
        log.debug("could not return a held connection to the pool", exc_info=True)


class HeldConnections:
    """The connections one manager keeps in autocommit between calls (at most as many as its calls ran at once,
    and only while the pool keeps spare connections for everyone else), so a call costs no pool checkout, no
    reset on return and no autocommit switch. Shared by a manager and its :meth:`pinned` views; it holds no
    reference to the manager, so it can be closed when the manager is garbage-collected."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._idle: list[Held] = []
        self._pool_counters: tuple[Any, Callable[[], int] | None, Callable[[], int] | None] | None = None

    def execute(self, sql: str, params: Mapping[str, Any], one: bool) -> tuple[Any, ...] | None:
        """``sql`` (already compiled for psycopg) on a kept connection; its first row, or None."""
        held = self.borrow()
        try:
            row = held.cursor.execute(sql, params, prepare=True).fetchone()
        except psycopg.Error as exc:
            broken = held.conn.broken
            if broken:
                held.fairy.invalidate()
            else:
                self.give_back(held)  # autocommit: the failed statement left no transaction behind
            raise DBAPIError.instance(sql, params, exc, psycopg.Error, dialect=self.engine.dialect,
                                      connection_invalidated=broken) from exc
        self.give_back(held)
        assert row is not None or not one  # the change statements always return exactly one row
        return row

    def borrow(self) -> Held:
        while True:
            try:
                held = self._idle.pop()
            except IndexError:
                break
            if connection_is_alive(held.conn, time.monotonic() - held.since):
                return held
            held.fairy.invalidate()  # found dead before anything was sent: a fresh one is safe
        fairy = self.engine.raw_connection()
        conn = fairy.driver_connection
        assert isinstance(conn, psycopg.Connection)
        try:
            conn.autocommit = True
        except psycopg.Error:
            fairy.invalidate()
            raise
        return Held(fairy, conn, conn.cursor())

    def give_back(self, held: Held) -> None:
        if len(self._idle) < MAX_IDLE_HELD and not held.conn.broken and self.pool_has_spare():
            held.since = time.monotonic()
            self._idle.append(held)
        else:
            release(held)

    def pool_has_spare(self) -> bool:
        """Whether the engine's pool could still hand a connection to someone else without waiting (a pool that
        cannot say, e.g. NullPool, keeps nothing). Its two counters are looked up once per pool (a disposed
        engine has a new one): this runs on every call."""
        pool = self.engine.pool
        counters = self._pool_counters
        if counters is None or counters[0] is not pool:
            size, checked_out = getattr(pool, "size", None), getattr(pool, "checkedout", None)
            usable = callable(size) and callable(checked_out)
            counters = self._pool_counters = (pool, size if usable else None, checked_out if usable else None)
        _, size, checked_out = counters
        return size is not None and checked_out is not None and checked_out() < size()

    def close(self) -> None:
        """Return every kept connection to the pool (they stay usable: the next call borrows anew)."""
        idle = self._idle
        while idle:
            try:
                held = idle.pop()
            except IndexError:
                return
            release(held)


def execute_pinned(pinned: Connection, sql: str, params: Mapping[str, Any], one: bool,
                   dialect: Dialect) -> tuple[Any, ...] | None:
    """``sql`` on a pinned SQLAlchemy connection's psycopg connection, switched to autocommit for the statement
    and back (SQLAlchemy and the pool expect transactional connections); a broken one is invalidated, and the
    pinned Connection reconnects on its next use."""
    proxied = pinned.connection
    conn = proxied.driver_connection
    assert isinstance(conn, psycopg.Connection)
    try:
        conn.autocommit = True
        try:
            cursor = proxied.info.get(_CURSOR_INFO_KEY)
            if cursor is None or cursor.closed or cursor.connection is not conn:
                cursor = proxied.info[_CURSOR_INFO_KEY] = conn.cursor()
            row = cursor.execute(sql, params, prepare=True).fetchone()
            assert row is not None or not one  # the change statements always return exactly one row
            return row
        finally:
            if not conn.broken:
                conn.autocommit = False
    except psycopg.Error as exc:
        raise DBAPIError.instance(sql, params, exc, psycopg.Error, dialect=dialect,
                                  connection_invalidated=conn.broken) from exc
    finally:
        if conn.broken:
            pinned.invalidate()
