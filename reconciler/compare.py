"""Read-only drift detection: ONE SQL statement per chunk returns only the drifting customers.

Invariant: a customer is returned exactly when ``abs(stored_balance - ledger_sum) > tolerance``
(strictly), with ``ledger_sum = SUM(amount)`` over its entries (0 when it has none), computed in
exact ``numeric`` arithmetic by PostgreSQL in one snapshot, and nothing is written.

The statement sums entries over the chunk's id range with an index-only scan of the covering index
``ix_customer_ledger_entries_customer_cover (customer_id, id) INCLUDE (amount)``, already in customer
order, so the aggregate needs no sort and streams; it is merge-joined (left) to the customers in the
same range, so customers without entries are compared against 0. Every value is a bound parameter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import BigInteger, ColumnElement, Connection, Select, and_, func, literal, select, true
from sqlalchemy.dialects.postgresql import ARRAY

from reconciler.chunks import Chunk
from reconciler.money import to_tolerance
from reconciler.schema import MONEY, customers, ledger_entries


@dataclass(frozen=True)
class Drift:
    """A customer whose cached balance differs from its ledger: ``drift = stored_balance - ledger_sum``."""

    customer_id: int
    stored_balance: Decimal
    ledger_sum: Decimal
    drift: Decimal


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


def drift_statement(tolerance: Decimal, *, first_id: int | None = None, last_id: int | None = None,
                    customer_ids: Sequence[int] | None = None) -> Select[int, Decimal, Decimal, Decimal]:
    """The comparison as one SELECT over ``[first_id, last_id]`` (or every customer when not given),
    optionally only the ``customer_ids``; drifting customers only, in id order."""
    sums = (
        select(ledger_entries.c.customer_id, func.sum(ledger_entries.c.amount).label("ledger_sum"))
        .where(_id_filter(ledger_entries.c.customer_id, first_id, last_id, customer_ids))
        .group_by(ledger_entries.c.customer_id)
        .subquery("sums")
    )
    ledger_sum = func.coalesce(sums.c.ledger_sum, literal(Decimal("0.00"), MONEY))
    drift = customers.c.balance - ledger_sum
    return (
        select(customers.c.id, customers.c.balance, ledger_sum.label("ledger_sum"), drift.label("drift"))
        .select_from(customers.outerjoin(sums, sums.c.customer_id == customers.c.id))
        .where(_id_filter(customers.c.id, first_id, last_id, customer_ids))
        .where(func.abs(drift) > literal(tolerance, MONEY))
        .order_by(customers.c.id)
    )


def _run(conn: Connection, statement: Select[int, Decimal, Decimal, Decimal]) -> list[Drift]:
    return [Drift(int(r[0]), Decimal(r[1]), Decimal(r[2]), Decimal(r[3])) for r in conn.execute(statement)]


def compare_chunk(conn: Connection, chunk: Chunk, tolerance: Decimal, *,
                  customer_ids: Sequence[int] | None = None) -> list[Drift]:
    """The drifting customers of ``chunk`` (restricted to ``customer_ids`` when given), in id order."""
    if customer_ids is not None and not customer_ids:
        return []
    return _run(conn, drift_statement(to_tolerance(tolerance), first_id=chunk.first_id, last_id=chunk.last_id,
                                      customer_ids=customer_ids))


def compare_all(conn: Connection, tolerance: Decimal) -> list[Drift]:
    """Every drifting customer in one unchunked statement: the reference the chunked result must equal."""
    return _run(conn, drift_statement(to_tolerance(tolerance)))
