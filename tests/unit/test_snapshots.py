"""pg_snapshot values (reconciler.snapshots): text form round trip, order, visibility (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.snapshots import Snapshot, describe, parse


def test_the_text_form_round_trips_and_is_normalised() -> None:
    """PostgreSQL's ``xmin:xmax:xip,...`` reads back as itself; in-flight xids come out sorted and unique."""
    assert str(parse("100:105:100,103")) == "100:105:100,103"
    assert parse("5:9:") == Snapshot(5, 9, ())
    assert Snapshot.of(1, 9, [7, 3, 7]) == Snapshot(1, 9, (3, 7))
    assert describe(None) == "none" and describe("5:9:") == "5:9:"
    for bad in ("", "5:9", "a:b:", "5:9:x"):
        with pytest.raises(ValueError, match="not a pg_snapshot"):
            parse(bad)


def test_order_and_visibility_follow_postgresql() -> None:
    """A later snapshot has the greater (xmax, xmin, -in-flight) key; visibility is pg_visible_in_snapshot's."""
    early, late = parse("10:20:10,15"), parse("10:20:15")
    assert late.is_later_than(early) and not early.is_later_than(late)
    assert parse("21:21:").is_later_than(late)
    assert late.visible(9) and late.visible(10) and not late.visible(15) and not late.visible(20)
    assert parse("30:31:30").started_after(late) and not early.started_after(late)


@given(st.integers(1, 1000), st.integers(0, 50), st.sets(st.integers(0, 49), max_size=5))
def test_parse_inverts_str(xmin: int, width: int, offsets: set[int]) -> None:
    """Any snapshot written as text parses back to itself."""
    snapshot = Snapshot.of(xmin, xmin + width, (xmin + o for o in offsets if o < width))
    assert parse(str(snapshot)) == snapshot
