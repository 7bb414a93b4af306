"""Chunked comparison on a real PostgreSQL: equals the unchunked query, tolerance is strict, exact
numeric arithmetic, and the statement is an index-only scan of the covering index with no sort."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from reconciler.chunks import Chunk, boundaries_from_ids, fetch_chunks, plan_chunks
from reconciler.compare import Drift, compare_all, compare_chunk, drift_statement
from reconciler.errors import InvalidAmountError, InvalidChunkSizeError, InvalidOperationError
from tests.factories import load_ledger, make_customer, post_entry

TOLERANCE = Decimal("0.01")
_ranges = itertools.count(1)
RANGE = 100_000


def _chunked(engine: Engine, chunk_size: int, tolerance: Decimal, **where: Any) -> list[Drift]:
    with engine.connect() as conn:
        found: list[Drift] = []
        for chunk in fetch_chunks(conn, chunk_size, **where):
            found.extend(compare_chunk(conn, chunk, tolerance, customer_ids=where.get("customer_ids")))
        return found


cents = st.integers(min_value=-10**8, max_value=10**8).filter(lambda c: c != 0)
ledgers = st.dictionaries(
    keys=st.integers(min_value=0, max_value=RANGE - 1),
    values=st.tuples(
        st.sampled_from([0, 0, 0, 1, -1, 2, -2, 3, 10**6, -(10**6)]),  # cents of drift (0 = honest)
        st.lists(cents, max_size=6)),
    max_size=40)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ledger=ledgers, chunk_size=st.sampled_from([1, 2, 3, 7, 50]),
       tolerance=st.sampled_from([Decimal("0.00"), Decimal("0.01"), Decimal("0.02")]))
def test_chunked_result_equals_one_unchunked_query(engine: Engine, ledger: dict[int, tuple[int, list[int]]],
                                                   chunk_size: int, tolerance: Decimal) -> None:
    """On random sparse ledgers, the union of compare_chunk over the plan == compare_all, in id order."""
    base = next(_ranges) * RANGE  # a fresh id range per example: the database is shared by the examples
    rows = {}
    for offset, (drift_cents, amounts) in ledger.items():
        total = sum(amounts)
        rows[base + offset] = (Decimal(total + drift_cents).scaleb(-2), [Decimal(a).scaleb(-2) for a in amounts])
    load_ledger(engine, rows)
    where: dict[str, Any] = {"from_id": base, "to_id": base + RANGE - 1}
    chunked = _chunked(engine, chunk_size, tolerance, **where)
    with engine.connect() as conn:
        reference = [d for d in compare_all(conn, tolerance) if base <= d.customer_id < base + RANGE]
        chunks = fetch_chunks(conn, chunk_size, **where)
    assert chunked == reference
    assert chunks == plan_chunks(boundaries_from_ids(sorted(rows), chunk_size), chunk_size)
    expected = {cid for cid, (bal, amounts) in rows.items() if abs(bal - sum(amounts, Decimal(0))) > tolerance}
    assert {d.customer_id for d in chunked} == expected


def test_empty_table_has_no_chunks_and_no_drift(engine: Engine) -> None:
    """No customers at all: no chunks, no drift, no error."""
    with engine.connect() as conn:
        assert fetch_chunks(conn, 10) == []
        assert compare_all(conn, TOLERANCE) == []
        assert compare_chunk(conn, Chunk(0, 1, 10**12, 0), TOLERANCE) == []


def test_one_customer_with_chunk_size_one(engine: Engine) -> None:
    """A single drifting customer is one chunk of one and is found."""
    make_customer(engine, 77, "10.00")
    post_entry(engine, 77, "9.00")
    with engine.connect() as conn:
        assert fetch_chunks(conn, 1) == [Chunk(0, 77, 77, 1)]
        assert compare_chunk(conn, Chunk(0, 77, 77, 1), TOLERANCE) == [
            Drift(77, Decimal("10.00"), Decimal("9.00"), Decimal("1.00"))]


def test_chunks_follow_the_range_and_id_restrictions(engine: Engine) -> None:
    """from_id/to_id and customer_ids restrict the plan and the comparison; sparse ids are fine."""
    ids = [3, 10, 11, 500, 9_000, 9_001, 1_000_000]
    for cid in ids:
        make_customer(engine, cid, "1.00")  # every customer drifts by 1.00 (no entries)
    with engine.connect() as conn:
        assert fetch_chunks(conn, 2, from_id=10, to_id=9_000) == [Chunk(0, 10, 499, 2), Chunk(1, 500, 9_000, 2)]
        assert fetch_chunks(conn, 2, customer_ids=[1_000_000, 11, 3, 424242]) == [
            Chunk(0, 3, 999_999, 2), Chunk(1, 1_000_000, 1_000_000, 1)]
        assert fetch_chunks(conn, 5, customer_ids=[]) == []
        assert fetch_chunks(conn, 5, from_id=600, to_id=800) == []
        wide = Chunk(0, 1, 10**7, len(ids))
        assert [d.customer_id for d in compare_chunk(conn, wide, TOLERANCE, customer_ids=[11, 9_001, 5])] == [11, 9_001]
        assert [d.customer_id for d in compare_chunk(conn, Chunk(0, 11, 9_000, 3), TOLERANCE)] == [11, 500, 9_000]
        assert compare_chunk(conn, wide, TOLERANCE, customer_ids=[]) == []
        with pytest.raises(InvalidOperationError, match="from_id 9 is greater than to_id 3"):
            fetch_chunks(conn, 2, from_id=9, to_id=3)
        with pytest.raises(InvalidChunkSizeError):
            fetch_chunks(conn, 0)


@pytest.fixture
def edges(engine: Engine) -> Iterator[Engine]:
    """Customers 1..8 with drifts 0.01, 0.02, -0.01, -0.02, 0, 5.00 (no entries), 0 (no entries), -250.00."""
    for cid, balance, amounts in [
        (1, "100.01", ["100.00"]), (2, "100.02", ["50.00", "50.00"]), (3, "99.99", ["100.00"]),
        (4, "-0.02", []), (5, "0.30", ["0.10", "0.10", "0.10"]), (6, "5.00", []), (7, "0.00", []),
        (8, "-50.00", ["100.00", "100.00"]),
    ]:
        make_customer(engine, cid, balance)
        for amount in amounts:
            post_entry(engine, cid, amount)
    yield engine


def _drifts(engine: Engine, tolerance: str) -> dict[int, Decimal]:
    with engine.connect() as conn:
        return {d.customer_id: d.drift for d in compare_chunk(conn, Chunk(0, 1, 8, 8), Decimal(tolerance))}


def test_exactly_the_tolerance_is_not_flagged(edges: Engine) -> None:
    """At tolerance 0.01, drifts of +-0.01 are not flagged; +-0.02, 5.00 and -250.00 are (strictly greater)."""
    assert _drifts(edges, "0.01") == {2: Decimal("0.02"), 4: Decimal("-0.02"), 6: Decimal("5.00"),
                                      8: Decimal("-250.00")}


def test_tolerance_zero_flags_a_single_cent(edges: Engine) -> None:
    """At tolerance 0, every non-zero drift is flagged, negative ones too; exact sums never are."""
    assert _drifts(edges, "0") == {1: Decimal("0.01"), 2: Decimal("0.02"), 3: Decimal("-0.01"),
                                   4: Decimal("-0.02"), 6: Decimal("5.00"), 8: Decimal("-250.00")}


def test_larger_tolerance_and_full_rows(edges: Engine) -> None:
    """Rows carry stored balance, ledger sum (0 without entries) and drift = stored - ledger."""
    with edges.connect() as conn:
        assert compare_chunk(conn, Chunk(0, 1, 8, 8), Decimal("5.00")) == [
            Drift(8, Decimal("-50.00"), Decimal("200.00"), Decimal("-250.00"))]
        assert compare_chunk(conn, Chunk(0, 6, 6, 1), Decimal("4.99")) == [
            Drift(6, Decimal("5.00"), Decimal("0.00"), Decimal("5.00"))]


def test_bad_tolerance_is_refused(edges: Engine) -> None:
    """A negative tolerance or a float is a named error, not a comparison."""
    with edges.connect() as conn:
        with pytest.raises(InvalidAmountError):
            compare_chunk(conn, Chunk(0, 1, 8, 8), Decimal("-0.01"))
        with pytest.raises(InvalidAmountError):
            compare_all(conn, 0.01)  # type: ignore[arg-type]


def test_sums_are_exact_at_the_limits_of_numeric(engine: Engine) -> None:
    """Big amounts and many cents add up exactly (numeric, never float)."""
    make_customer(engine, 1, "9999999999999999.99")
    post_entry(engine, 1, "9999999999999999.98")
    post_entry(engine, 1, "0.01")
    make_customer(engine, 2, "9999999999999999.99")
    post_entry(engine, 2, "9999999999999999.99")
    post_entry(engine, 2, "9999999999999999.99")
    post_entry(engine, 2, "-9999999999999999.98")
    with engine.connect() as conn:
        assert compare_all(conn, Decimal("0")) == [
            Drift(2, Decimal("9999999999999999.99"), Decimal("10000000000000000.00"), Decimal("-0.01"))]


def _plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _plan_nodes(child)


def test_compare_chunk_is_an_index_only_scan_without_sort(engine: Engine) -> None:
    """EXPLAIN of compare_chunk's statement: Index Only Scan on the covering index, no Sort, no Seq Scan
    of the entries."""
    with engine.begin() as conn:
        conn.execute(text("insert into customers (id, balance) select g, 0 from generate_series(1, 10000) g"))
        conn.execute(text("""insert into customer_ledger_entries (customer_id, amount, kind)
                             select (g % 10000) + 1, 1.00, 'payment' from generate_series(1, 100000) g"""))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("vacuum (analyze) customers"))
        conn.execute(text("vacuum (analyze) customer_ledger_entries"))
    with engine.connect() as conn:
        chunk = fetch_chunks(conn, 1_000)[3]
        compiled = drift_statement(TOLERANCE, first_id=chunk.first_id, last_id=chunk.last_id).compile(
            dialect=conn.dialect)
        plan = conn.exec_driver_sql("explain (format json) " + str(compiled), compiled.params).scalar_one()
        nodes = list(_plan_nodes(plan[0]["Plan"]))
        assert len(compare_chunk(conn, chunk, TOLERANCE)) == 1_000  # all drift by -10.00: the plan is the real one
    scans = [(n["Node Type"], n.get("Index Name")) for n in nodes
             if n.get("Relation Name") == "customer_ledger_entries"]
    assert scans == [("Index Only Scan", "ix_customer_ledger_entries_customer_cover")]
    assert not [n for n in nodes if n["Node Type"] in ("Sort", "Incremental Sort", "Seq Scan")], nodes


def test_fetching_chunk_boundaries_is_one_query(engine: Engine) -> None:
    """fetch_chunks reads its boundaries with ONE statement, however many chunks it plans."""
    with engine.begin() as conn:
        conn.execute(text("insert into customers (id, balance) select g * 3, 0 from generate_series(1, 1000) g"))
    statements: list[str] = []
    from sqlalchemy import event

    def count(*args: Any) -> None:
        statements.append(str(args[2]))

    event.listen(engine, "before_cursor_execute", count)
    try:
        with engine.connect() as conn:
            chunks = fetch_chunks(conn, 7)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(chunks) == 143
    assert sum(c.customers for c in chunks) == 1000
    assert len([s for s in statements if "with recursive starts" in s]) == 1
    assert len(statements) == 1
