"""reconciler.snapshots agrees with PostgreSQL: the SQL ``reconciler.snapshot_order`` and
``pg_visible_in_snapshot`` judge as the Python values do."""

from __future__ import annotations

from sqlalchemy import Engine, text

from reconciler.snapshots import parse

CASES = ("10:20:10,15", "10:20:15", "21:21:", "10:20:", "12:20:12,13,19")


def test_order_and_visibility_match_the_database(engine: Engine) -> None:
    """For every pair of snapshots, SQL's snapshot_order and Python's order_key agree; so does visibility."""
    with engine.connect() as conn:
        for a in CASES:
            for b in CASES:
                later = conn.execute(text("""select reconciler.snapshot_order(cast(:a as pg_snapshot))
                                                  > reconciler.snapshot_order(cast(:b as pg_snapshot))"""),
                                     {"a": a, "b": b}).scalar_one()
                assert later == parse(a).is_later_than(parse(b)), (a, b)
            for xid in range(8, 23):
                visible = conn.execute(text("select pg_visible_in_snapshot(cast(:x as text)::xid8, "
                                            "cast(:s as pg_snapshot))"), {"x": str(xid), "s": a}).scalar_one()
                assert visible == parse(a).visible(xid), (a, xid)
            assert conn.execute(text("select cast(cast(:s as pg_snapshot) as text)"), {"s": a}).scalar_one() == a
