"""Who holds a customer's row lock: the sessions an operator must look at when a correction is ``busy``.

Read-only diagnostics, taking no lock. PostgreSQL keeps row locks in the row itself, not in ``pg_locks``:
a locked row's ``xmax`` is the locking transaction's id, or a multixact id when several transactions share
the lock (e.g. FOR KEY SHARE by foreign key checks beside a FOR NO KEY UPDATE). ``pg_blocking_pids`` needs a
session that is waiting, and a correction skipped with NOWAIT never waits, so the lockers are found from
``xmax`` instead: as a transaction id, and (when it is one) as a multixact's members, each matched against
``pg_stat_activity.backend_xid``. A lock whose holder has ended, or one this role may not see, yields no
locker: the correction is skipped all the same and the message says the holder was not identified.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError


@dataclass(frozen=True)
class RowLocker:
    """A live session holding (part of) a customer's row lock."""

    pid: int
    application_name: str
    state: str | None

    def to_json(self) -> dict[str, object]:
        return {"pid": self.pid, "application_name": self.application_name, "state": self.state}

    def describe(self) -> str:
        name = self.application_name or "no application_name"
        return f"pid {self.pid} ({name}{', ' + self.state if self.state else ''})"


_LOCKER_XIDS = text("select c.xmax::text as xmax from customers c where c.id = :customer_id")

_MULTIXACT_MEMBERS = text("select m.xid::text as xid from pg_get_multixact_members(cast(:xmax as xid)) m")

_SESSIONS_BY_XID = text("""
select a.pid, coalesce(a.application_name, '') as application_name, a.state
from pg_stat_activity a
where a.backend_xid::text = any(cast(:xids as text[])) and a.pid <> pg_backend_pid()
order by a.pid""")


def row_lockers(conn: Connection, customer_id: int) -> list[RowLocker]:
    """The live sessions holding a lock on ``customers`` row ``customer_id`` (empty when none is seen)."""
    xmax = conn.execute(_LOCKER_XIDS, {"customer_id": customer_id}).scalar_one_or_none()
    if xmax is None or xmax == "0":
        return []
    xids = [xmax]
    try:
        with conn.begin_nested():  # not a multixact (or long gone): PostgreSQL raises, which is an answer
            xids += [row.xid for row in conn.execute(_MULTIXACT_MEMBERS, {"xmax": xmax})]
    except DBAPIError:
        pass
    rows = conn.execute(_SESSIONS_BY_XID, {"xids": xids}).all()
    return [RowLocker(int(row.pid), str(row.application_name), row.state) for row in rows]


def describe_lockers(lockers: list[RowLocker] | tuple[RowLocker, ...]) -> str:
    """``pid 123 (billing, idle in transaction)`` joined, or a sentence when none was identified."""
    if not lockers:
        return "a session that could not be identified (it may have just finished)"
    return ", ".join(locker.describe() for locker in lockers)


def format_lockers(lockers: Sequence[Mapping[str, Any]]) -> str:
    """Stored lockers (:meth:`RowLocker.to_json` values) for people: ``pid 123 (billing)``, comma-joined."""
    if not lockers:
        return "a session that could not be identified"
    return ", ".join(f"pid {item.get('pid')} ({item.get('application_name') or 'no application_name'})"
                     for item in lockers)
