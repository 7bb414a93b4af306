"""Ledger positions (reconciler.positions): what is settled, by ids and snapshot visibility (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from reconciler.positions import Position, advance, window_start
from reconciler.snapshots import parse


def test_without_writers_in_flight_everything_visible_is_settled() -> None:
    """No open writer: every id up to the largest visible one is final."""
    assert advance(None, through_id=500, xmin=90, xmax=90).settled_id == 500


def test_an_open_writer_holds_the_window_back_until_it_ends() -> None:
    """An in-flight writer older than the previous snapshot keeps settled where it was; a newer one lets it move
    to the previous through_id (it drew its ids after that snapshot), never to the current one."""
    first = advance(None, through_id=100, xmin=50, xmax=50)
    held = advance(first, through_id=200, xmin=40, xmax=60, in_flight=[40])  # 40 started before `first`
    assert (held.settled_id, held.held_by) == (100, 40)
    still = advance(held, through_id=300, xmin=40, xmax=70, in_flight=[40, 65])
    assert still.settled_id == 100
    newer = advance(still, through_id=400, xmin=71, xmax=80, in_flight=[71])  # every open writer is new
    assert newer.settled_id == 300
    assert window_start(newer) == 300 and window_start(None) == 0


def test_without_history_an_open_writer_settles_nothing() -> None:
    """The first position, taken while a writer is open, cannot vouch for any id."""
    assert advance(None, through_id=100, xmin=10, xmax=12, in_flight=[10]).settled_id == 0


def test_positions_round_trip_through_json() -> None:
    """A stored position reads back as itself; anything else reads as no position."""
    position = Position(10, 7, 100, 105, (100, 103))
    assert position.snapshot == "100:105:100,103"
    assert Position.from_json(position.to_json()) == position
    assert Position.from_json(None) is None and Position.from_json({"through_id": 1}) is None
    assert parse("5:9:") == Position(0, 0, 5, 9).read_in


@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 5), st.lists(st.integers(0, 5), max_size=3)),
                min_size=1, max_size=12))
def test_settled_never_moves_back_nor_passes_what_was_visible(steps: list[tuple[int, int, list[int]]]) -> None:
    """Whatever the sequence of snapshots, settled_id is monotonic and never above the largest visible id."""
    previous: Position | None = None
    through, xid = 0, 1
    for grow, advance_xids, open_offsets in steps:
        through += grow
        xmin = xid
        xid += advance_xids
        in_flight = sorted({xmin + o for o in open_offsets if xmin + o < xid})
        current = advance(previous, through_id=through, xmin=min(in_flight, default=xid), xmax=xid,
                          in_flight=in_flight)
        assert current.settled_id <= current.through_id
        if previous is not None:
            assert current.settled_id >= previous.settled_id
        previous = current
