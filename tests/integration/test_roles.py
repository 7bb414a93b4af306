"""Least privilege, with real logins created by each test: the reader cannot write, the core can do exactly
the balance core's work, and a run split between a reader and an operator ends as a single-login run does."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, ProgrammingError
from typer.testing import CliRunner

from reconciler import migrate, pipeline
from reconciler.audit import AuditEvent, append_audit
from reconciler.balances import BalanceManager
from reconciler.cli import app
from reconciler.db import make_engine, make_read_engine, read_only_url
from reconciler.pipeline import RunOptions
from reconciler.roles import CORE, OPERATOR, READER, ROLES, apply_roles
from tests.factories import cached_balance, ledger_sum, make_customer, make_drifting_customer, post_entry
from tests.fix_db import create_database, drop_database
from tests.fix_roles import MakeLogin

runner = CliRunner()


@pytest.fixture
def login_engine() -> Iterator[Any]:
    """``login_engine(url)``: an engine on a login's URL, disposed after the test."""
    made: list[Engine] = []

    def make(url: URL, **kwargs: Any) -> Engine:
        engine = make_engine(url, **kwargs)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.dispose()


def refused(engine: Engine, statement: str) -> str:
    """Run ``statement`` and return the SQLSTATE it was refused with."""
    with pytest.raises(DBAPIError) as caught, engine.begin() as conn:
        conn.execute(text(statement))
    return str(getattr(caught.value.orig, "sqlstate", ""))


def small_ledger(engine: Engine) -> None:
    """Customers 1..12, 100.00 each in the ledger; 3 and 7 drift a little (corrected), 9 a lot (review)."""
    for customer in range(1, 13):
        drift = {3: "2.00", 7: "-1.50", 9: "500.00"}.get(customer, "0.00")
        make_drifting_customer(engine, customer, total="100.00", drift=drift)


def test_db_roles_is_idempotent_and_prints_what_it_granted(database_env: URL, engine: Engine) -> None:
    """`db roles --json` lists each role's grants; running it again grants the same and creates nothing;
    the privileges in the database are exactly those."""
    first = runner.invoke(app, ["db", "roles", "--json"])
    assert first.exit_code == 0, first.stderr
    again = runner.invoke(app, ["db", "roles", "--json"])
    payload, second = json.loads(first.stdout), json.loads(again.stdout)
    assert set(payload["roles"]) == set(ROLES)
    assert all(not r["created"] and not r["login"] for r in second["roles"].values())
    assert second["statements"] == payload["statements"]
    assert "GRANT UPDATE (balance, updated_at) ON \"public\".customers TO reconciler_core" in payload["statements"]
    human = runner.invoke(app, ["db", "roles"])
    assert human.exit_code == 0 and "reconciler_reader (exists, NOLOGIN):" in human.stdout
    with engine.connect() as conn:
        def can(role: str, table: str, privilege: str) -> bool:
            return bool(conn.execute(text("select has_table_privilege(:r, :t, :p)"),
                                     {"r": role, "t": table, "p": privilege}).scalar())

        assert can(READER, "customers", "SELECT") and not can(READER, "customers", "UPDATE")
        assert can(READER, "reconciler.audit_log", "SELECT") and not can(READER, "reconciler.tasks", "INSERT")
        assert can(CORE, "customer_ledger_entries", "INSERT") and not can(CORE, "customer_ledger_entries", "UPDATE")
        assert not can(CORE, "customer_ledger_entries", "TRUNCATE") and not can(CORE, "reconciler.runs", "INSERT")
        assert not can(CORE, "reconciler.audit_log", "INSERT")  # only through reconciler.append_audit
        assert conn.execute(text("select has_column_privilege(:r, 'customers', 'id', 'UPDATE')"),
                            {"r": CORE}).scalar() is False
        assert can(OPERATOR, "reconciler.tasks", "UPDATE") and can(OPERATOR, "customers", "SELECT")
        assert not can(OPERATOR, "reconciler.audit_log", "UPDATE")
        assert conn.execute(text("select bool_and(not rolcanlogin) from pg_roles where rolname = any(:r)"),
                            {"r": list(ROLES)}).scalar()


def test_the_reader_alone_cannot_write(roles: Engine, make_login: MakeLogin, login_engine: Any) -> None:
    """As a member of reconciler_reader only: it reads everything, and every write is refused."""
    make_drifting_customer(roles, 1, drift="2.00")
    reader = login_engine(make_login(READER))
    with reader.connect() as conn:
        assert conn.execute(text("select count(*) from reconciler.audit_log")).scalar_one() == 0
        assert conn.execute(text("select balance from customers where id = 1")).scalar_one() == Decimal("102.00")
    denied = "42501"
    assert refused(reader, "update customers set balance = 0 where id = 1") == denied
    assert refused(reader, "insert into customer_ledger_entries (customer_id, amount, kind) "
                           "values (1, 1.00, 'payment')") == denied
    assert refused(reader, "insert into reconciler.tasks (customer_id, stored_balance, ledger_sum, drift) "
                           "values (1, 0, 0, 0)") == denied
    assert refused(reader, "update reconciler.runs set status = 'failed'") == denied
    assert refused(reader, """select reconciler.append_audit('[{"kind": "guard", "actor": "x"}]')""") == denied
    assert cached_balance(roles, 1) == Decimal("102.00")


def test_the_core_alone_runs_the_balance_core_and_nothing_else(roles: Engine, make_login: MakeLogin,
                                                                login_engine: Any) -> None:
    """As a member of reconciler_core only: payments, transfers, reconciliations (both policies) and the
    realtime task work; DROP, TRUNCATE, UPDATE and DELETE of entries, and bookkeeping writes, are refused."""
    for customer in (1, 2):
        make_customer(roles, customer, "0.00")
    make_drifting_customer(roles, 3, drift="4.00")
    make_drifting_customer(roles, 4, drift="-3.00")
    core_engine = login_engine(make_login(CORE))
    core = BalanceManager(core_engine)
    core.update_balance(1, Decimal("50.00"), kind="deposit", idempotency_key="dep-1")
    core.update_balance(1, Decimal("50.00"), kind="deposit", idempotency_key="dep-1")  # replay: no-op
    core.transfer(1, 2, Decimal("20.00"))
    core.update_balance(3, Decimal("1.00"), kind="payment")  # off its chain: opens a realtime task
    assert core.reconcile_balance(3, "ledger", audit={"by": "core test"}).changed
    assert core.reconcile_balance(4, "balance", audit={"by": "core test"}).changed
    assert (cached_balance(roles, 1), cached_balance(roles, 2)) == (Decimal("30.00"), Decimal("20.00"))
    for customer in (1, 2, 3, 4):
        assert core.validate_balance(customer).ok
        assert cached_balance(roles, customer) == ledger_sum(roles, customer)
    with roles.connect() as conn:
        assert conn.execute(text("select source from reconciler.tasks")).scalars().all() == ["realtime"]
        assert conn.execute(text("select kind from reconciler.audit_log order by seq")).scalars().all() == [
            "task", "correction", "correction"]
    denied = "42501"
    assert refused(core_engine, "drop table customer_ledger_entries") == denied
    assert refused(core_engine, "truncate customer_ledger_entries") == denied
    assert refused(core_engine, "update customer_ledger_entries set amount = 0") == denied
    assert refused(core_engine, "delete from customer_ledger_entries") == denied
    assert refused(core_engine, "update customers set id = 99 where id = 1") == denied
    assert refused(core_engine, "delete from customers where id = 1") == denied
    assert refused(core_engine, "insert into reconciler.runs (status, trigger) values ('running', 'cli')") == denied
    assert refused(core_engine, "update reconciler.tasks set status = 'dismissed'") == denied
    assert refused(core_engine, "insert into reconciler.audit_log (seq, at, kind, actor, body, prev_hash, hash) "
                                "values (1, now(), 'task', 'x', '{}', repeat('0', 64), repeat('1', 64))") == denied


def _statements_on(engine: Engine) -> list[str]:
    seen: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda conn, cursor, statement, *args: seen.append(statement))
    return seen


@pytest.mark.slow
def test_a_run_split_between_reader_and_operator_matches_a_single_login_run(
        roles: Engine, make_login: MakeLogin, login_engine: Any, server_url: URL, template_url: URL,
        tmp_path: Path, real_steps: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The read URL as a reconciler_reader login and the write URL as a reconciler_operator login: the run
    finds, corrects, checks quality and reports exactly as a run with one all-powerful login; every read-only
    step read on the reader (its statements were seen there), and `report` and `audit verify` work as it."""
    single_url = create_database(server_url, template_url)
    single = make_engine(single_url)
    try:
        small_ledger(single)
        small_ledger(roles)
        options = RunOptions(max_drift_ratio=Decimal("1"), chunk_size=5)
        alone = pipeline.run_reconciliation(single, options, report_dir=tmp_path / "single")

        operator = login_engine(make_login(OPERATOR))
        reader = make_read_engine(make_login(READER))
        seen = _statements_on(reader)
        split = pipeline.run_reconciliation(operator, options, report_dir=tmp_path / "split", read_engine=reader)
        reader.dispose()

        keys = ("status", "customers_checked", "drift_count", "corrected", "needs_review", "open", "total_abs_drift")
        assert {k: getattr(split, k) for k in keys} == {k: getattr(alone, k) for k in keys}
        assert (split.corrected, split.needs_review) == (2, 1)
        state = """select (select string_agg(concat_ws(':', id, balance), ',' order by id) from customers),
                          (select string_agg(concat_ws(':', customer_id, status, drift), ',' order by customer_id)
                           from reconciler.tasks),
                          (select string_agg(concat_ws(':', suite, expectation, success), ',' order by id)
                           from reconciler.quality_results),
                          (select count(*) from reconciler.audit_log)"""
        with single.connect() as a, roles.connect() as b:
            assert tuple(a.execute(text(state)).one()) == tuple(b.execute(text(state)).one())
        reports = [json.loads((tmp_path / name / "summary.json").read_text()) for name in ("single", "split")]
        for report in reports:
            for moving in ("started_at", "finished_at", "generated_at", "audit_head"):
                report.pop(moving)
            report["quality"].pop("data_docs")
            report["tie_out"].pop("as_compared_snapshot")  # names the run's own snapshots and times
        assert reports[0] == reports[1]
        assert any("customer_ledger_entries" in s for s in seen)  # compare and explain read there
        assert any("reconciler.quality_results" in s for s in seen)  # the report read there

        reader_url = make_login(READER)
        monkeypatch.setenv("RECONCILER_DATABASE_URL", make_login(OPERATOR).render_as_string(hide_password=False))
        monkeypatch.setenv("RECONCILER_READ_DATABASE_URL", reader_url.render_as_string(hide_password=False))
        report = runner.invoke(app, ["report", "--out", str(tmp_path / "cli")])
        assert report.exit_code == 0, report.stderr
        verify = runner.invoke(app, ["audit", "verify"])
        assert verify.exit_code == 0 and "audit trail intact" in verify.stdout
    finally:
        single.dispose()
        drop_database(single_url)


def test_the_read_engine_cannot_write_even_as_a_superuser(engine: Engine) -> None:
    """Every transaction on the read engine is READ ONLY (25006), and GX's URL asks for read-only sessions."""
    make_customer(engine, 1, "5.00")
    reader = make_read_engine(engine.url)
    try:
        with pytest.raises(DBAPIError) as caught, reader.begin() as conn:
            conn.execute(text("update customers set balance = 0"))
        assert getattr(caught.value.orig, "sqlstate", None) == "25006"
    finally:
        reader.dispose()
    dsn = read_only_url(engine.url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn) as conn:
        assert conn.execute("show default_transaction_read_only").fetchone() == ("on",)
    assert cached_balance(engine, 1) == Decimal("5.00")


def test_adopting_a_ledger_leaves_the_companys_privileges_alone(empty_db_url: URL, make_login: MakeLogin) -> None:
    """Migrating an existing ledger changes no privilege of the company's roles (only `db roles` grants)."""
    engine = make_engine(empty_db_url)
    company = make_login(password="company")  # stands for the company's own role
    try:
        with engine.begin() as conn:
            conn.execute(text("create table customers (id bigint primary key, balance numeric(18,2) not null)"))
            conn.execute(text("""create table customer_ledger_entries (id bigserial primary key,
                                 customer_id bigint not null references customers, amount numeric(18,2) not null)"""))
            conn.execute(text(f'grant select, update on customers to "{company.username}"'))
            conn.execute(text(f'grant select on customer_ledger_entries to "{company.username}"'))
        acl = """select relname, relacl::text from pg_class
                 where relname in ('customers', 'customer_ledger_entries') order by relname"""
        with engine.connect() as conn:
            before = conn.execute(text(acl)).all()
        migrate.upgrade(engine)
        with engine.connect() as conn:
            assert conn.execute(text(acl)).all() == before
            assert conn.execute(text("select has_schema_privilege(:r, 'reconciler', 'USAGE')"),
                                {"r": company.username}).scalar() is False
        result = apply_roles(engine)  # an adopted serial id: the core may use its sequence
        assert any(g.role == CORE and g.target.startswith("SEQUENCE") for g in result.grants)
    finally:
        with engine.begin() as conn:  # the login is dropped after the test: take back what it holds here
            conn.execute(text(f'drop owned by "{company.username}"'))
        engine.dispose()


def test_db_roles_on_an_unmigrated_database_says_what_to_do(empty_db_url: URL,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Bad input: exit 2 and the command to run first."""
    monkeypatch.setenv("RECONCILER_DATABASE_URL", empty_db_url.render_as_string(hide_password=False))
    result = runner.invoke(app, ["db", "roles"])
    assert result.exit_code == 2 and "db upgrade" in result.stderr


def test_only_append_audit_writes_the_chain_for_an_operator(roles: Engine, make_login: MakeLogin,
                                                           login_engine: Any) -> None:
    """An operator appends through reconciler.append_audit, and cannot insert or rewrite rows itself."""
    operator = login_engine(make_login(OPERATOR))
    with operator.begin() as conn:
        assert append_audit(conn, AuditEvent("guard", "ops", {"mode": "observe"})) == 1
    with roles.connect() as conn:
        assert conn.execute(text("select seq from reconciler.audit_head")).scalar_one() == 1
    with pytest.raises(ProgrammingError), operator.begin() as conn:
        conn.execute(text("update reconciler.audit_head set seq = 0"))
    assert post_entry and ledger_sum  # the factories used above


def test_db_roles_as_a_login_without_the_right_says_so(roles: Engine, make_login: MakeLogin,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """`db roles` as an operator (no CREATEROLE, owns nothing): exit 2, one line, nothing changed."""
    monkeypatch.setenv("RECONCILER_DATABASE_URL", make_login(OPERATOR).render_as_string(hide_password=False))
    result = runner.invoke(app, ["db", "roles"])
    assert result.exit_code == 2 and "CREATEROLE" in result.stderr
