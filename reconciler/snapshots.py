"""PostgreSQL snapshots (``pg_snapshot``) as values: the one place that reads their text form and orders them.

Invariant: :func:`parse` and :meth:`Snapshot.__str__` are inverse over PostgreSQL's own text form
``xmin:xmax:xip1,xip2,...`` (in-flight xids ascending, as ``pg_current_snapshot()::text`` writes them);
:meth:`Snapshot.order_key` is the SQL function ``reconciler.snapshot_order`` (migration 0009) in Python, so a
point the change feed moves in SQL and a position the quality windows advance in Python agree on which of two
snapshots of one cluster is the later; :meth:`Snapshot.visible` is ``pg_visible_in_snapshot``.

Used by :mod:`reconciler.positions` (the quality checks' ledger positions) and :mod:`reconciler.change_feed`
(the incremental runs' verified point). Pure: no database access.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Snapshot:
    """A snapshot: every xid below ``xmin`` is finished, every xid at or above ``xmax`` not yet started, and
    ``in_flight`` lists the ones in between still running when it was taken."""

    xmin: int
    xmax: int
    in_flight: tuple[int, ...] = ()

    @classmethod
    def of(cls, xmin: int, xmax: int, in_flight: Iterable[int] = ()) -> Snapshot:
        """A snapshot with its in-flight xids sorted and unique (the form PostgreSQL writes)."""
        return cls(int(xmin), int(xmax), tuple(sorted({int(x) for x in in_flight})))

    def __str__(self) -> str:
        return f"{self.xmin}:{self.xmax}:{','.join(map(str, self.in_flight))}"

    def order_key(self) -> tuple[int, int, int]:
        """``(xmax, xmin, -len(in_flight))``: the greater key is the later snapshot (``reconciler.snapshot_order``)."""
        return self.xmax, self.xmin, -len(self.in_flight)

    def is_later_than(self, other: Snapshot) -> bool:
        return self.order_key() > other.order_key()

    def started_after(self, other: Snapshot) -> bool:
        """Whether every transaction in flight here got its xid after ``other`` was taken (``xmin >= other.xmax``)."""
        return self.xmin >= other.xmax

    def visible(self, xid: int) -> bool:
        """Whether a transaction ``xid`` had committed (or aborted) as far as this snapshot sees:
        ``pg_visible_in_snapshot``."""
        return xid < self.xmin or (xid < self.xmax and xid not in self.in_flight)


def parse(text: str) -> Snapshot:
    """``xmin:xmax:xip1,xip2`` -> :class:`Snapshot`; ValueError when ``text`` is not that form."""
    try:
        xmin, xmax, xip = str(text).split(":")
        return Snapshot.of(int(xmin), int(xmax), (int(x) for x in xip.split(",") if x))
    except ValueError:
        raise ValueError(f"not a pg_snapshot: {text!r} (expected xmin:xmax:xip1,xip2,...)") from None


def describe(snapshot: str | None) -> str:
    """A snapshot for people: ``xmin:xmax:in-progress`` as PostgreSQL writes it, or 'none'."""
    return str(parse(snapshot)) if snapshot else "none"
