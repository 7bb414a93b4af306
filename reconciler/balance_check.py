"""One customer's stored balance against its ledger, read with psycopg alone: what ``reconciler check`` runs.

Invariant: the same single statement (one snapshot, no lock, no write; :func:`validate_sql` is its one home,
which the balance core imports) and the same verdict as
:meth:`reconciler.balances.BalanceManager.validate_balance` (a test holds them equal), without importing
SQLAlchemy, the balance core or a pool: a command that reads one row starts in a fraction of the time.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import psycopg

from reconciler.config import configured_database_url
from reconciler.errors import CustomerNotFoundError, DatabaseUnavailableError
from reconciler.money import is_drift


def validate_sql(customer_id: str) -> str:
    """THE balance check statement (its one home): the stored balance, the ledger sum and the entry count of
    the customer whose id is the bound parameter ``customer_id`` (written in the caller's parameter style:
    psycopg's here, SQLAlchemy's in :mod:`reconciler.balances.statements`)."""
    return f"""
SELECT c.balance, totals.ledger_sum, totals.entry_count
FROM customers AS c
CROSS JOIN LATERAL (
    SELECT coalesce(sum(e.amount), 0) AS ledger_sum, count(*) AS entry_count
    FROM customer_ledger_entries AS e WHERE e.customer_id = c.id
) AS totals
WHERE c.id = {customer_id}
"""


VALIDATE_SQL = validate_sql("%(customer_id)s::bigint")


@dataclass(frozen=True)
class CheckedBalance:
    """A customer's stored balance and ledger sum in one snapshot; ``ok`` when ``abs(drift) <= tolerance``."""

    customer_id: int
    stored_balance: Decimal
    ledger_sum: Decimal
    drift: Decimal
    ok: bool
    entry_count: int
    tolerance: Decimal


def libpq_conninfo(url: str) -> str:
    """A libpq URI for a SQLAlchemy-style ``postgresql+psycopg://`` (or plain ``postgres[ql]://``) URL."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+", 1)[0] not in ("postgresql", "postgres"):
        raise DatabaseUnavailableError(f"RECONCILER_DATABASE_URL must be a postgresql:// URL, got a {scheme}:// URL")
    return f"postgresql://{rest}"


def ledger_conninfo() -> str:
    """``RECONCILER_DATABASE_URL`` as a libpq URI, else the embedded database (started on demand)."""
    configured = configured_database_url()
    if configured:
        return libpq_conninfo(configured)
    from reconciler.embedded import embedded_conninfo  # noqa: PLC0415

    return embedded_conninfo()


def _where(conninfo: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(conninfo)
    host, port = params.get("host") or "localhost", params.get("port") or 5432
    return f"host {host}, port {port}, database {params.get('dbname')}"


def check_balance(conninfo: str, customer_id: int, tolerance: Decimal) -> CheckedBalance:
    """Read ``customer_id``'s balance and ledger sum in one statement; raises :class:`CustomerNotFoundError`
    for an unknown customer and :class:`DatabaseUnavailableError` (one line) when the database is unreachable."""
    if not -(2**63) <= customer_id < 2**63:
        raise CustomerNotFoundError(f"customer_id {customer_id} is outside bigint, so no such customer exists")
    try:
        conn = psycopg.connect(conninfo, autocommit=True)
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "no answer"
        raise DatabaseUnavailableError(
            f"cannot reach the ledger database ({_where(conninfo)}): {reason}. Check that PostgreSQL runs there "
            f"and that RECONCILER_DATABASE_URL is right, or unset it to use the embedded database.") from None
    with conn:
        row = conn.execute(VALIDATE_SQL, {"customer_id": customer_id}).fetchone()
    if row is None:
        raise CustomerNotFoundError(f"customer {customer_id} does not exist in customers; check the id")
    balance, ledger_sum, entries = Decimal(row[0]), Decimal(row[1]), int(row[2])
    drift = balance - ledger_sum
    return CheckedBalance(customer_id, balance, ledger_sum, drift, not is_drift(drift, tolerance), entries, tolerance)
