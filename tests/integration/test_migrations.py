"""Migrations: create on an empty database, adopt a company's existing ledger, downgrade cleanly."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import Engine, inspect, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from reconciler import migrate
from reconciler.db import make_engine
from tests.factories import make_company_ledger

HEAD = "0010"


@pytest.fixture
def empty_engine(empty_db_url: URL) -> Engine:
    eng = make_engine(empty_db_url)
    yield eng  # type: ignore[misc]
    eng.dispose()


def _columns(engine: Engine, table: str, schema: str | None = None) -> set[str]:
    return {c["name"] for c in inspect(engine).get_columns(table, schema=schema)}


def _indexes(engine: Engine, table: str) -> set[str]:
    return {i["name"] for i in inspect(engine).get_indexes(table) if i["name"]}


def test_upgrade_creates_ledger_and_reconciler_schema(empty_engine: Engine) -> None:
    """An empty database gets both ledger tables, the reconciler tables and the covering index."""
    migrate.upgrade(empty_engine)
    assert migrate.current_revision(empty_engine) == HEAD
    assert {"id", "balance", "updated_at"} <= _columns(empty_engine, "customers")
    assert {"balance_after", "idempotency_key", "kind", "created_at"} <= _columns(
        empty_engine, "customer_ledger_entries")
    assert {"runs", "tasks", "findings", "run_chunks", "quality_results"} <= set(
        inspect(empty_engine).get_table_names(schema="reconciler"))
    assert "ix_customer_ledger_entries_customer_cover" in _indexes(empty_engine, "customer_ledger_entries")
    migrate.upgrade(empty_engine)  # a second upgrade is a no-op
    assert migrate.current_revision(empty_engine) == HEAD


def test_created_ledger_is_append_only(empty_engine: Engine) -> None:
    """UPDATE, DELETE and TRUNCATE on entries are refused by the database itself."""
    migrate.upgrade(empty_engine)
    with empty_engine.begin() as conn:
        conn.execute(text("insert into customers (id, balance) values (1, 5)"))
        conn.execute(text("insert into customer_ledger_entries (customer_id, amount, kind) values (1, 5, 'x')"))
    for statement in ("update customer_ledger_entries set amount = 6",
                      "delete from customer_ledger_entries",
                      "truncate customer_ledger_entries"):
        with pytest.raises(DBAPIError, match="append-only"), empty_engine.begin() as conn:
            conn.execute(text(statement))
    with empty_engine.connect() as conn:
        assert conn.execute(text("select amount from customer_ledger_entries")).scalar_one() == Decimal("5.00")


def test_one_unresolved_task_per_customer_is_enforced(empty_engine: Engine) -> None:
    """The partial unique index refuses a second open task for the same customer."""
    migrate.upgrade(empty_engine)
    with empty_engine.begin() as conn:
        conn.execute(text("insert into customers (id, balance) values (1, 5)"))
        conn.execute(text("insert into reconciler.tasks (customer_id, stored_balance, ledger_sum, drift) "
                          "values (1, 5, 0, 5)"))
    with pytest.raises(DBAPIError, match="ux_tasks_one_unresolved_per_customer"), empty_engine.begin() as conn:
        conn.execute(text("insert into reconciler.tasks (customer_id, stored_balance, ledger_sum, drift, status) "
                          "values (1, 5, 0, 5, 'needs_review')"))


def test_adoption_keeps_rows_and_extra_columns_then_downgrade_restores(empty_engine: Engine) -> None:
    """Existing tables are adopted (rows and extra columns kept, missing columns added) and a
    downgrade removes only what was added."""
    make_company_ledger(empty_engine)
    migrate.upgrade(empty_engine)
    entry_columns = _columns(empty_engine, "customer_ledger_entries")
    assert {"note", "balance_after", "idempotency_key", "kind", "created_at"} <= entry_columns
    assert {"email", "updated_at"} <= _columns(empty_engine, "customers")
    with empty_engine.connect() as conn:
        rows = conn.execute(text("select id, balance, email from customers order by id")).all()
        assert [(r.id, r.balance, r.email) for r in rows] == [
            (1, Decimal("10.00"), "a@example.com"), (2, Decimal("7.50"), "b@example.com")]
        assert conn.execute(text("select count(*) from customer_ledger_entries")).scalar_one() == 2
    # Adopted tables are not append-only until `db harden`.
    with empty_engine.begin() as conn:
        conn.execute(text("update customer_ledger_entries set note = 'renamed' where id = 1"))
    migrate.harden(empty_engine)
    with pytest.raises(DBAPIError, match="append-only"), empty_engine.begin() as conn:
        conn.execute(text("update customer_ledger_entries set note = 'again' where id = 1"))

    migrate.downgrade(empty_engine)
    assert migrate.current_revision(empty_engine) is None
    assert _columns(empty_engine, "customer_ledger_entries") == {"id", "customer_id", "amount", "note"}
    assert _columns(empty_engine, "customers") == {"id", "balance", "email"}
    with empty_engine.connect() as conn:
        assert conn.execute(text("select sum(amount) from customer_ledger_entries")).scalar_one() == Decimal("15.00")


def test_downgrade_of_created_schema_removes_everything(empty_engine: Engine) -> None:
    """A downgrade after a fresh create leaves no ledger or reconciler tables behind."""
    migrate.upgrade(empty_engine)
    migrate.downgrade(empty_engine)
    inspector = inspect(empty_engine)
    assert "customers" not in inspector.get_table_names()
    assert "customer_ledger_entries" not in inspector.get_table_names()
    assert set(inspector.get_table_names(schema="reconciler")) == {"alembic_version"}
