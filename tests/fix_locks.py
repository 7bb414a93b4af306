"""Another company service holding customers' row locks, and a watcher that sees who waits on it.

``hold_row_locks`` is a real second session (its own ``application_name``) that keeps ``SELECT ... FOR
UPDATE`` / ``FOR NO KEY UPDATE`` open on some customers until the block ends, as Django's
``select_for_update()`` around a slow payment does. ``LockWaitWatcher`` polls ``pg_blocking_pids`` while the
code under test runs and records every session that had to wait on the holder: the tests assert it saw none.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
from sqlalchemy.engine import URL

SERVICE_APPLICATION = "slow-payments-service"


def libpq(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


@dataclass(frozen=True)
class Holder:
    """The session holding the locks."""

    pid: int
    application_name: str


@contextmanager
def hold_row_locks(url: URL, locks: Mapping[int, str], *,
                   application_name: str = SERVICE_APPLICATION) -> Iterator[Holder]:
    """Hold ``{customer_id: "FOR UPDATE" | "FOR NO KEY UPDATE" | ...}`` in one open transaction."""
    with psycopg.connect(libpq(url), application_name=application_name) as conn:
        for customer_id, mode in locks.items():
            assert mode in ("FOR UPDATE", "FOR NO KEY UPDATE", "FOR SHARE", "FOR KEY SHARE")
            conn.execute(f"select id from customers where id = %s {mode}", (customer_id,))
        pid = conn.execute("select pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        try:
            yield Holder(int(pid), application_name)
        finally:
            conn.rollback()


class LockWaitWatcher:
    """Records the sessions found waiting on ``holder_pid`` (by application name and query) until stopped."""

    def __init__(self, url: URL, holder_pid: int) -> None:
        self._url = url
        self._holder = holder_pid
        self._stop = threading.Event()
        self.waiters: list[tuple[str, str]] = []
        self._thread = threading.Thread(target=self._watch, name="lock-wait-watcher", daemon=True)

    def _watch(self) -> None:
        with psycopg.connect(libpq(self._url), autocommit=True, application_name="lock-wait-watcher") as conn:
            # Event.wait is the poll interval of an observer, not a synchronisation: the watched code runs freely.
            while not self._stop.wait(0.02):
                rows = conn.execute("""select application_name, left(query, 200) from pg_stat_activity
                                       where %s = any(pg_blocking_pids(pid))""", (self._holder,)).fetchall()
                self.waiters.extend((str(app), str(query)) for app, query in rows)

    def __enter__(self) -> LockWaitWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
