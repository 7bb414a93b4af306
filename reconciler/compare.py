"""Read-only drift detection: ONE SQL statement per chunk returns only the drifting customers.

Invariant: a customer is returned exactly when ``abs(stored_balance - ledger_sum) > tolerance``
(strictly), with ``ledger_sum = SUM(amount)`` over its entries (0 when it has none), computed in
exact ``numeric`` arithmetic by PostgreSQL in one snapshot, and nothing is written.

The statement sums entries over the chunk's id range with an index-only scan of the covering index
``ix_customer_ledger_entries_customer_cover (customer_id, id) INCLUDE (amount)``, already in customer
order, so the aggregate needs no sort and streams; it is merge-joined (left) to the customers in the
same range, so customers without entries are compared against 0. Every value is a bound parameter.

A run compares a chunk with :func:`compare_chunk_totals`: the same per-customer rows folded by ONE aggregate
into one row carrying the chunk's totals (customers compared, the sum of their cached balances, the sum of
their ledger sums, the snapshot the statement read) and the drifting customers as arrays. The tie-out of the
run's report then needs no second pass over the ledger: within a chunk, ``balance_total - ledger_total`` is
exactly the sum of every compared customer's drift, in the same snapshot as the drifts themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Select,
    Subquery,
    Text,
    and_,
    cast,
    func,
    literal,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import ARRAY

from reconciler.chunks import Chunk
from reconciler.money import to_tolerance
from reconciler.schema import MONEY, TOTAL, customers, ledger_entries


@dataclass(frozen=True)
class Drift:
    """A customer whose cached balance differs from its ledger: ``drift = stored_balance - ledger_sum``."""

    customer_id: int
    stored_balance: Decimal
    ledger_sum: Decimal
    drift: Decimal


@dataclass(frozen=True)
class ChunkComparison:
    """One chunk as its comparison statement saw it, in ONE snapshot: the drifting customers (id order) and the
    totals over every customer compared, drifting or not (``balance_total - ledger_total`` is their net drift)."""

    drifts: list[Drift]
    customers: int
    balance_total: Decimal
    ledger_total: Decimal
    snapshot: str


_BIGINT_ARRAY = ARRAY(BigInteger)


def _id_filter(column: ColumnElement[int], first_id: int | None, last_id: int | None,
               customer_ids: Sequence[int] | None) -> ColumnElement[bool]:
    conditions: list[ColumnElement[bool]] = []
    if first_id is not None and last_id is not None:
        conditions.append(column.between(first_id, last_id))
    if customer_ids is not None:
        conditions.append(column == func.any(literal(sorted({int(i) for i in customer_ids}),
                                                     type_=_BIGINT_ARRAY)))
    return and_(true(), *conditions)


def _ledger_sums(first_id: int | None, last_id: int | None,
                 customer_ids: Sequence[int] | None) -> tuple[Subquery, ColumnElement[Decimal]]:
    """Each customer's ledger sum over the scope (a grouped subquery), and the sum as a column that is 0.00 for a
    customer without entries."""
    sums = (
        select(ledger_entries.c.customer_id, func.sum(ledger_entries.c.amount).label("ledger_sum"))
        .where(_id_filter(ledger_entries.c.customer_id, first_id, last_id, customer_ids))
        .group_by(ledger_entries.c.customer_id)
        .subquery("sums")
    )
    ledger_sum = func.coalesce(sums.c.ledger_sum, literal(Decimal("0.00"), MONEY))
    return sums, ledger_sum


def drift_statement(tolerance: Decimal, *, first_id: int | None = None, last_id: int | None = None,
                    customer_ids: Sequence[int] | None = None) -> Select[int, Decimal, Decimal, Decimal]:
    """The comparison as one SELECT over ``[first_id, last_id]`` (or every customer when not given),
    optionally only the ``customer_ids``; drifting customers only, in id order."""
    sums, ledger_sum = _ledger_sums(first_id, last_id, customer_ids)
    drift = customers.c.balance - ledger_sum
    return (
        select(customers.c.id, customers.c.balance, ledger_sum.label("ledger_sum"), drift.label("drift"))
        .select_from(customers.outerjoin(sums, sums.c.customer_id == customers.c.id))
        .where(_id_filter(customers.c.id, first_id, last_id, customer_ids))
        .where(func.abs(drift) > literal(tolerance, MONEY))
        .order_by(customers.c.id)
    )


def _per_customer(first_id: int | None, last_id: int | None, customer_ids: Sequence[int] | None) -> Select[Any]:
    sums, ledger_sum = _ledger_sums(first_id, last_id, customer_ids)
    return (
        select(customers.c.id, customers.c.balance, ledger_sum.label("ledger_sum"))
        .select_from(customers.outerjoin(sums, sums.c.customer_id == customers.c.id))
        .where(_id_filter(customers.c.id, first_id, last_id, customer_ids))
        # Kept on purpose: it makes the planner keep the streaming merge join over the covering index (the
        # aggregate above needs no order itself, and without one the planner may hash the whole range).
        .order_by(customers.c.id)
    )


def totals_statement(tolerance: Decimal, *, first_id: int | None = None, last_id: int | None = None,
                     customer_ids: Sequence[int] | None = None) -> Select[Any]:
    """The chunk's comparison as ONE row: customers compared, sum of balances, sum of ledger sums, the
    statement's snapshot, and the drifting customers' ids, balances and ledger sums as arrays."""
    per = _per_customer(first_id, last_id, customer_ids).subquery("per")
    drifting = func.abs(per.c.balance - per.c.ledger_sum) > literal(tolerance, MONEY)
    return select(
        func.count(),
        func.coalesce(func.sum(per.c.balance), literal(Decimal("0.00"), TOTAL)),
        func.coalesce(func.sum(per.c.ledger_sum), literal(Decimal("0.00"), TOTAL)),
        cast(func.pg_current_snapshot(), Text),
        func.array_agg(per.c.id).filter(drifting),
        func.array_agg(per.c.balance).filter(drifting),
        func.array_agg(per.c.ledger_sum).filter(drifting),
    ).select_from(per)


def compare_chunk_totals(conn: Connection, chunk: Chunk, tolerance: Decimal, *,
                         customer_ids: Sequence[int] | None = None) -> ChunkComparison:
    """The drifting customers of ``chunk`` (restricted to ``customer_ids`` when given) and the chunk's totals,
    from one statement (one snapshot)."""
    if customer_ids is not None and not customer_ids:
        snapshot = conn.execute(select(cast(func.pg_current_snapshot(), Text))).scalar_one()
        return ChunkComparison([], 0, Decimal("0.00"), Decimal("0.00"), str(snapshot))
    row: Any = conn.execute(totals_statement(to_tolerance(tolerance), first_id=chunk.first_id, last_id=chunk.last_id,
                                        customer_ids=customer_ids)).one()
    ids, balances, sums = row[4] or [], row[5] or [], row[6] or []
    drifts = sorted((Drift(int(i), Decimal(b), Decimal(s), Decimal(b) - Decimal(s))
                     for i, b, s in zip(ids, balances, sums, strict=True)), key=lambda d: d.customer_id)
    return ChunkComparison(drifts, int(row[0]), Decimal(row[1]), Decimal(row[2]), str(row[3]))


def _run(conn: Connection, statement: Select[int, Decimal, Decimal, Decimal]) -> list[Drift]:
    return [Drift(int(r[0]), Decimal(r[1]), Decimal(r[2]), Decimal(r[3])) for r in conn.execute(statement)]


def compare_chunk(conn: Connection, chunk: Chunk, tolerance: Decimal, *,
                  customer_ids: Sequence[int] | None = None) -> list[Drift]:
    """The drifting customers of ``chunk`` (restricted to ``customer_ids`` when given), in id order."""
    return compare_chunk_totals(conn, chunk, tolerance, customer_ids=customer_ids).drifts


def compare_all(conn: Connection, tolerance: Decimal) -> list[Drift]:
    """Every drifting customer in one unchunked statement: the reference the chunked result must equal."""
    return _run(conn, drift_statement(to_tolerance(tolerance)))
