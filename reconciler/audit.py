"""The tamper-evident audit trail: ``reconciler.audit_log``, one row per event, SHA-256 hash-chained.

Invariant: rows are only ever appended, by the database (migration 0007): :func:`append_audit` queues events
in the caller's transaction, and when that transaction commits a deferred trigger chains them under the lock
of the one-row ``reconciler.audit_head``, so concurrent writers cannot fork the chain, the chain's order is
commit order, and a rolled-back transaction leaves no audit row. The chain's lock is the last lock a
transaction takes and is held only for its commit, so it never waits behind a customer's or a task's row
lock. Each row stores ``body``, its canonical JSON (``seq``, ``at``, ``kind``, ``actor``, ``data``) as the
exact text that was hashed, and ``hash = sha256(prev_hash || body)`` (hex, UTF-8), ``prev_hash`` being the
previous row's hash (64 zeros for the first). :func:`verify_chain` recomputes every link in Python,
independently of the database's own code.

This module imports nothing above it; :mod:`reconciler.tasks`, the balance core, the correction executor and
the guard call :func:`append_audit` (or embed :func:`task_events_sql`) inside their own transactions.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, bindparam, text
from sqlalchemy.dialects.postgresql import JSONB

from reconciler.errors import InvalidOperationError

#: The ``prev_hash`` of the first row.
GENESIS_HASH = "0" * 64
#: What an audit row records: a task transition, a correction by the core, a person's approval, a guard change.
KINDS = ("task", "correction", "approval", "guard")
_BODY_KEYS = ("actor", "at", "data", "kind", "seq")


@dataclass(frozen=True)
class AuditEvent:
    """One event to append: its ``kind`` (one of :data:`KINDS`), who did it, and what (JSON-able, decimals as
    strings); the database adds ``seq`` and ``at``."""

    kind: str
    actor: str
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        if self.kind not in KINDS:
            raise InvalidOperationError(f"audit kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not isinstance(self.actor, str) or not self.actor.strip():
            raise InvalidOperationError(f"an audit event needs who did it (actor), got {self.actor!r}")
        return {"kind": self.kind, "actor": self.actor, "data": json.loads(json.dumps(dict(self.data), default=str))}


@dataclass(frozen=True)
class Head:
    """The end of the chain: how many rows it has and the last row's hash (the genesis hash when empty)."""

    length: int
    hash: str


_APPEND = text("select reconciler.append_audit(cast(:events as jsonb))").bindparams(
    bindparam("events", type_=JSONB))


def append_audit(conn: Connection, event: AuditEvent | Iterable[AuditEvent]) -> int:
    """Append ``event`` (or several, in order) to the chain as part of the caller's transaction: they are
    chained when it commits, and vanish with it on rollback. Returns how many were queued."""
    events = [event] if isinstance(event, AuditEvent) else list(event)
    if not events:
        return 0
    return int(conn.execute(_APPEND, {"events": [e.to_json() for e in events]}).scalar_one())


def task_events_sql(rows: str) -> str:
    """SQL (one row, ``audited``: how many) appending one ``task`` event per row of ``rows`` (a relation ``c``
    with columns ``id``, ``customer_id`` and ``audit_event``, the event just added to the task's
    ``resolution.events``), in task id order. :mod:`reconciler.tasks` embeds it in each transition's statement,
    so a transition and its audit row are written together or not at all."""
    return f"""select reconciler.append_audit(jsonb_agg(jsonb_build_object(
        'kind', 'task', 'actor', coalesce(c.audit_event ->> 'by', 'unknown'),
        'data', jsonb_build_object('task_id', c.id, 'customer_id', c.customer_id, 'event', c.audit_event))
        order by c.id)) as audited
    from {rows}"""


def read_head(conn: Connection) -> Head:
    """The chain's head as the database records it (``reconciler.audit_head``)."""
    row = conn.execute(text("select seq, hash from reconciler.audit_head")).one()
    return Head(int(row.seq), str(row.hash))


# ---- verification (pure core, then the database edge) ---------------------------------------------------

def link_hash(prev_hash: str, body: str) -> str:
    """``sha256(prev_hash || body)`` in hex, over UTF-8: what every row's ``hash`` must be."""
    return hashlib.sha256((prev_hash + body).encode("utf-8")).hexdigest()


def format_at(value: dt.datetime) -> str:
    """A row's time as its body records it (UTC, microseconds)."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class AuditRow:
    """One stored row, as read for verification."""

    seq: int
    at: dt.datetime
    kind: str
    actor: str
    body: str
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class BrokenLink:
    """The first row where the chain does not hold: which row, what is wrong, the expected and actual hash."""

    seq: int
    problem: str
    expected: str
    actual: str

    def to_json(self) -> dict[str, object]:
        return {"seq": self.seq, "problem": self.problem, "expected": self.expected, "actual": self.actual}


@dataclass(frozen=True)
class ChainReport:
    """What :func:`check_chain` found: the length and head hash it recomputed, and the first broken link."""

    length: int
    head_hash: str
    broken: BrokenLink | None

    @property
    def intact(self) -> bool:
        return self.broken is None

    def to_json(self) -> dict[str, object]:
        return {"intact": self.intact, "length": self.length, "head_hash": self.head_hash,
                "broken": self.broken.to_json() if self.broken else None}


def _body_problem(row: AuditRow) -> str | None:
    try:
        body = json.loads(row.body)
    except ValueError:
        return "its body is not JSON"
    if not isinstance(body, dict) or sorted(body) != list(_BODY_KEYS):
        return f"its body does not have exactly the keys {', '.join(_BODY_KEYS)}"
    stated = {"seq": row.seq, "kind": row.kind, "actor": row.actor, "at": format_at(row.at)}
    for key, value in stated.items():
        if body[key] != value:
            return f"its column {key} ({value!r}) differs from its hashed body ({body[key]!r})"
    return None


def check_chain(rows: Iterable[AuditRow], head: Head | None) -> ChainReport:
    """Recompute every link of ``rows`` (in ``seq`` order) and compare the end with ``head`` (pure).

    A row is broken when its ``seq`` is not the next one, its ``prev_hash`` is not the previous row's hash, its
    ``hash`` is not ``sha256(prev_hash || body)``, or its columns differ from its hashed body. An edited row is
    named itself; a deleted row is named by the row after it; rows cut off the end are named by ``head``.
    """
    expected_prev = GENESIS_HASH
    length = 0
    for row in rows:
        expected_seq = length + 1
        if row.seq != expected_seq:
            return ChainReport(length, expected_prev, BrokenLink(
                row.seq, f"row {expected_seq} is missing (the row after it is {row.seq})", expected_prev,
                row.prev_hash))
        if row.prev_hash != expected_prev:
            return ChainReport(length, expected_prev, BrokenLink(
                row.seq, "its prev_hash is not the previous row's hash", expected_prev, row.prev_hash))
        recomputed = link_hash(row.prev_hash, row.body)
        if recomputed != row.hash:
            return ChainReport(length, expected_prev, BrokenLink(
                row.seq, "its hash is not sha256(prev_hash || body): the row was edited", recomputed, row.hash))
        problem = _body_problem(row)
        if problem is not None:
            return ChainReport(length, expected_prev, BrokenLink(row.seq, problem, recomputed, row.hash))
        expected_prev = row.hash
        length += 1
    if head is not None and (head.length != length or head.hash != expected_prev):
        return ChainReport(length, expected_prev, BrokenLink(
            head.length, f"the recorded head is row {head.length} but the chain ends at row {length}"
                         if head.length != length else "the recorded head hash is not the last row's hash",
            head.hash, expected_prev))
    return ChainReport(length, expected_prev, None)


#: Rows are read in batches of this many (memory stays flat whatever the chain's length).
VERIFY_BATCH = 10_000


def _rows(conn: Connection) -> Iterable[AuditRow]:
    after = 0
    while True:
        batch = conn.execute(text("""
            select seq, at, kind, actor, body, prev_hash, hash from reconciler.audit_log
            where seq > :after order by seq limit :limit"""), {"after": after, "limit": VERIFY_BATCH}).all()
        for r in batch:
            yield AuditRow(int(r.seq), r.at, r.kind, r.actor, r.body, r.prev_hash, r.hash)
        if len(batch) < VERIFY_BATCH:
            return
        after = int(batch[-1].seq)


def verify_chain(conn: Connection) -> ChainReport:
    """Verify the whole chain as stored (call inside one REPEATABLE READ, READ ONLY transaction, so rows and
    head are one snapshot)."""
    return check_chain(_rows(conn), read_head(conn))


def audit_rows(conn: Connection, *, kind: str | None = None) -> list[dict[str, Any]]:
    """Every row's seq, kind, actor and data (for tests and people), in chain order."""
    rows = conn.execute(text("""select seq, kind, actor, body from reconciler.audit_log
                                where cast(:kind as text) is null or kind = :kind order by seq"""),
                        {"kind": kind}).all()
    return [{"seq": int(r.seq), "kind": r.kind, "actor": r.actor, "data": json.loads(r.body)["data"]} for r in rows]
