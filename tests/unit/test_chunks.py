"""Chunk planning laws (pure): every customer in exactly one chunk, contiguous, in order, equal sizes."""

from __future__ import annotations

import bisect
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.chunks import Boundary, Chunk, boundaries_from_ids, check_chunk_size, plan_chunks
from reconciler.errors import InvalidChunkSizeError, InvalidOperationError

ids_strategy = st.sets(st.integers(min_value=1, max_value=2**62), max_size=300)
sparse_ids = st.one_of(ids_strategy, st.sets(st.integers(min_value=1, max_value=500), max_size=300))
sizes = st.one_of(st.just(1), st.integers(min_value=1, max_value=60))


def _members(chunk: Chunk, ordered: list[int]) -> list[int]:
    return ordered[bisect.bisect_left(ordered, chunk.first_id):bisect.bisect_right(ordered, chunk.last_id)]


@settings(max_examples=300)
@given(ids=sparse_ids, chunk_size=sizes)
def test_chunks_cover_every_id_exactly_once_in_order(ids: set[int], chunk_size: int) -> None:
    """Each id falls in exactly one chunk; chunks are in id order, contiguous, and count their members."""
    ordered = sorted(ids)
    chunks = plan_chunks(boundaries_from_ids(ordered, chunk_size), chunk_size)
    if not ordered:
        assert chunks == []
        return
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert chunks[0].first_id == ordered[0]
    assert chunks[-1].last_id == ordered[-1]
    for before, after in itertools.pairwise(chunks):
        assert before.last_id + 1 == after.first_id
    seen: list[int] = []
    for chunk in chunks:
        assert chunk.first_id <= chunk.last_id
        members = _members(chunk, ordered)
        assert len(members) == chunk.customers
        assert members[0] == chunk.first_id
        seen.extend(members)
    assert seen == ordered


@settings(max_examples=300)
@given(ids=sparse_ids, chunk_size=sizes)
def test_chunk_sizes_are_equal_except_the_last(ids: set[int], chunk_size: int) -> None:
    """All chunks hold chunk_size customers except the last, which holds 1..chunk_size."""
    chunks = plan_chunks(boundaries_from_ids(sorted(ids), chunk_size), chunk_size)
    assert all(c.customers == chunk_size for c in chunks[:-1])
    if chunks:
        assert 1 <= chunks[-1].customers <= chunk_size
    assert sum(c.customers for c in chunks) == len(ids)
    assert len(chunks) == -(-len(ids) // chunk_size)


def test_empty_selection_gives_no_chunks() -> None:
    """No customers, no chunks (and no error)."""
    assert plan_chunks([], 10) == []
    assert boundaries_from_ids([], 10) == []


def test_one_customer_is_one_chunk() -> None:
    """A single customer forms one chunk of one, whatever the chunk size."""
    for size in (1, 2, 10_000):
        assert plan_chunks(boundaries_from_ids([42], size), size) == [Chunk(0, 42, 42, 1)]


def test_chunk_size_one_gives_one_chunk_per_customer() -> None:
    """chunk_size 1 gives one chunk per customer, each ending just before the next customer."""
    assert plan_chunks(boundaries_from_ids([3, 7, 8], 1), 1) == [
        Chunk(0, 3, 6, 1), Chunk(1, 7, 7, 1), Chunk(2, 8, 8, 1)]


def test_sparse_ids_make_ranges_that_tile_the_gaps() -> None:
    """Sparse ids: a chunk runs up to just before the next chunk's first customer."""
    ids = [1, 2, 100, 1_000, 1_001, 50_000, 50_001]
    assert plan_chunks(boundaries_from_ids(ids, 3), 3) == [
        Chunk(0, 1, 999, 3), Chunk(1, 1_000, 50_000, 3), Chunk(2, 50_001, 50_001, 1)]


@pytest.mark.parametrize("bad", [0, -1, -10_000, True, 2.5, "10"])
def test_chunk_size_below_one_is_a_named_error(bad: object) -> None:
    """A chunk size that is not a whole number >= 1 raises InvalidChunkSizeError naming the value."""
    with pytest.raises(InvalidChunkSizeError, match="chunk_size must be a whole number"):
        check_chunk_size(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidChunkSizeError):
        plan_chunks([Boundary(1, 1)], bad)  # type: ignore[arg-type]


def test_boundaries_that_do_not_match_the_chunk_size_are_refused() -> None:
    """Boundaries planned for another chunk size are an error, never a silently wrong plan."""
    planned_for_two = boundaries_from_ids([1, 2, 3, 4, 5], 2)
    with pytest.raises(InvalidOperationError, match="do not describe chunks of 3"):
        plan_chunks(planned_for_two, 3)
