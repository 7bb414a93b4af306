"""A run's chunk plan in ``reconciler.run_chunks``: planned once, each chunk compared once.

Invariant: this module is the ONE writer of ``reconciler.run_chunks``. A run's plan is stored once (a second
planning returns it); a chunk goes ``planned -> compared`` and never back, so a retried comparison of a
compared chunk returns its stored counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, select, text
from sqlalchemy.dialects.postgresql import insert

from reconciler.chunks import Chunk
from reconciler.compare import ChunkComparison
from reconciler.schema import run_chunks


def stored_plan(conn: Connection, run_id: int) -> list[Any]:
    """The run's chunk rows in index order (empty before planning)."""
    return list(conn.execute(select(run_chunks).where(run_chunks.c.run_id == run_id)
                             .order_by(run_chunks.c.chunk_index)).all())


def store_plan(conn: Connection, run_id: int, planned: Sequence[Chunk],
               chunk_ids: Sequence[Sequence[int]] | None = None) -> None:
    """Store the planned chunks (status ``planned``); an incremental run's chunks with their customer ids."""
    if planned:
        conn.execute(insert(run_chunks), [
            {"run_id": run_id, "chunk_index": c.index, "first_id": c.first_id, "last_id": c.last_id,
             "planned_customers": c.customers, "status": "planned",
             "customer_ids": list(chunk_ids[c.index]) if chunk_ids is not None else None} for c in planned])


def lock_chunk(conn: Connection, run_id: int, chunk_index: int) -> Any | None:
    """The chunk's row, locked for this transaction (one comparer per chunk), or None."""
    return conn.execute(select(run_chunks).where(run_chunks.c.run_id == run_id,
                                                 run_chunks.c.chunk_index == chunk_index)
                        .with_for_update()).one_or_none()


def mark_compared(conn: Connection, run_id: int, chunk: Chunk, drift_count: int,
                  totals: ChunkComparison | None = None) -> None:
    """Mark the chunk compared with its drift count and, when given, the totals its comparison statement
    returned (customers compared, sum of balances, sum of ledger sums, the snapshot it read)."""
    values: dict[str, object] = {"status": "compared", "customers_checked": chunk.customers,
                                 "drift_count": drift_count, "compared_at": text("now()")}
    if totals is not None:
        values.update(compared_customers=totals.customers, balance_total=totals.balance_total,
                      ledger_total=totals.ledger_total, snapshot=totals.snapshot)
    conn.execute(run_chunks.update()
                 .where(run_chunks.c.run_id == run_id, run_chunks.c.chunk_index == chunk.index)
                 .values(**values))


def compared_totals(conn: Connection, run_id: int) -> Any:
    """The run's totals as its comparison statements saw them: chunks planned and compared, chunks compared
    with recorded totals, customers compared, sum of balances, sum of ledger sums, first and last
    ``compared_at``, and the snapshots of the first and the last chunk compared."""
    return conn.execute(text("""
        select count(*) as chunks,
               count(*) filter (where status = 'compared') as compared_chunks,
               count(balance_total) as chunks_with_totals,
               coalesce(sum(compared_customers), 0) as customers,
               coalesce(sum(balance_total), 0) as balance_total,
               coalesce(sum(ledger_total), 0) as ledger_total,
               min(compared_at) as first_compared_at, max(compared_at) as last_compared_at,
               (array_agg(snapshot order by compared_at, chunk_index)
                    filter (where snapshot is not null))[1] as first_snapshot,
               (array_agg(snapshot order by compared_at desc, chunk_index desc)
                    filter (where snapshot is not null))[1] as last_snapshot
        from reconciler.run_chunks where run_id = :run"""), {"run": run_id}).one()


def compared_chunks(conn: Connection, run_id: int) -> list[Any]:
    """The run's compared chunk rows in index order."""
    return list(conn.execute(select(run_chunks).where(run_chunks.c.run_id == run_id,
                                                      run_chunks.c.status == "compared")
                             .order_by(run_chunks.c.chunk_index)).all())
