"""Positions in the append-only ledger: how far a reader has read, by entry id AND transaction visibility.

Invariant: a reader that reads, at each check, every entry with ``id > previous.settled_id`` (the *window*,
:func:`window_start`) reads every committed entry at least once, without any wall-clock lag and whatever the
clients put in ``created_at``. Entries may be read twice (that is the price of soundness); none is missed.

Why ids alone are not enough: ids come from the identity sequence when a row is inserted, but transactions
commit in any order. An entry with id 100 whose transaction is still open is invisible while id 101,
committed, is already read; a reader that then resumes after 101 never sees 100. So a position records
the snapshot it was read in (``pg_current_snapshot()``: ``xmin``, ``xmax`` and the in-flight transactions)
together with ``through_id``, the largest entry id visible in it, and derives ``settled_id``: the largest id
at or below which every entry is final (committed, or never will be) in that snapshot:

- no writing transaction in flight: every id ever drawn is at most ``through_id``'s sequence position, and
  any later insert draws a larger id, so ``settled_id = through_id``;
- otherwise, if every in-flight transaction got its xid after the previous position's snapshot
  (``xmin >= previous.xmax``), each of them drew its ids after that snapshot, i.e. above
  ``previous.through_id``: ``settled_id = previous.through_id``;
- otherwise (a writer older than the previous position is still open) ``settled_id = previous.settled_id``:
  the window keeps growing until that transaction ends (:attr:`Position.held_by` names the oldest one).

Residual race, named: PostgreSQL draws an inserted row's id just before it assigns the inserting transaction
its xid, inside the same INSERT. A snapshot taken in exactly that instant sees neither the row nor the writer;
if another id above it is already committed and that writer then stays open past the next check, its entry
can fall below ``settled_id``. The window is microseconds inside one statement (not a clock lag); the nightly
full check (``reconciler quality --full``) reads everything regardless.

This module is pure except :func:`read_position` (one statement, one snapshot). Snapshots themselves (their
text form, their order) are :mod:`reconciler.snapshots`', shared with the change feed's verified point.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text

from reconciler.snapshots import Snapshot, parse

#: The table whose ids a position counts (the append-only ledger).
LEDGER = "customer_ledger_entries"


@dataclass(frozen=True)
class Position:
    """How far a reader has read: ``through_id`` (largest id visible in ``snapshot``), ``settled_id`` (every id
    at or below it is final in that snapshot), and the snapshot itself (``xmin:xmax:xip,...``)."""

    through_id: int
    settled_id: int
    xmin: int
    xmax: int
    in_flight: tuple[int, ...] = ()

    @property
    def read_in(self) -> Snapshot:
        """The snapshot this position was read in."""
        return Snapshot.of(self.xmin, self.xmax, self.in_flight)

    @property
    def snapshot(self) -> str:
        """The snapshot in PostgreSQL's own text form (``pg_snapshot``)."""
        return str(self.read_in)

    @property
    def held_by(self) -> int | None:
        """The oldest writing transaction still open in the snapshot (what keeps ``settled_id`` back), if any."""
        return min(self.in_flight) if self.in_flight else None

    def to_json(self) -> dict[str, object]:
        return {"through_id": self.through_id, "settled_id": self.settled_id, "snapshot": self.snapshot}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Position | None:
        """The position stored by :meth:`to_json`, or None when ``data`` holds none (e.g. an older format)."""
        if not isinstance(data, Mapping):
            return None
        try:
            read_in = parse(str(data["snapshot"]))
            return cls(int(data["through_id"]), int(data["settled_id"]), read_in.xmin, read_in.xmax,
                       read_in.in_flight)
        except (KeyError, TypeError, ValueError):
            return None


def advance(previous: Position | None, *, through_id: int, xmin: int, xmax: int,
            in_flight: Sequence[int] = ()) -> Position:
    """The position read in a snapshot ``(xmin, xmax, in_flight)`` whose largest visible id is ``through_id``,
    after ``previous`` (pure; the rules are in the module docstring). Without a previous position and with
    writers in flight, nothing is known to be settled beyond 0."""
    now = Snapshot.of(xmin, xmax, in_flight)
    flight = now.in_flight
    if not flight:
        settled = through_id
    elif previous is None:
        settled = 0
    elif now.started_after(previous.read_in):
        settled = previous.through_id
    else:
        settled = previous.settled_id
    if previous is not None:
        settled = max(settled, previous.settled_id)  # never moves back
    return Position(through_id, settled, xmin, xmax, flight)


def window_start(previous: Position | None) -> int:
    """Entries with ``id >`` this must be read by the next check (0 before any position: the whole history)."""
    return 0 if previous is None else previous.settled_id


def read_position(conn: Connection, previous: Position | None = None) -> Position:
    """The reader's position now: the snapshot and the largest visible ledger id, from ONE statement (so the id
    and the snapshot agree), advanced from ``previous``. Reads the primary key's last entry only."""
    row = conn.execute(text(f"""
        select cast(pg_current_snapshot() as text) as snapshot,
               (select coalesce(max(id), 0) from {LEDGER}) as through_id""")).one()
    read_in = parse(str(row.snapshot))
    return advance(previous, through_id=int(row.through_id), xmin=read_in.xmin, xmax=read_in.xmax,
                   in_flight=read_in.in_flight)
