"""The guard against real PostgreSQL: every write around the core is recorded (observe) or refused
(enforce) by the database, with its writer's name; the core's own writes never are; a write that breaks
the ledger opens a ``bypass`` task at commit. Fake services are plain psycopg connections with their own
``application_name``, as the company's other code would be."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL

from reconciler import change_feed, guard
from reconciler.balances import BalanceManager
from reconciler.guard import guard_status, install, uninstall
from reconciler.tasks import MAX_TASK_WRITERS, list_tasks
from tests.factories import cached_balance, ledger_sum, make_customer, soften_ledger

D = Decimal


def libpq(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


@contextmanager
def service(db_url: URL, name: str, *, autocommit: bool = True) -> Iterator[psycopg.Connection[Any]]:
    """A fake service writing around the core: plain psycopg with its own application_name."""
    conn = psycopg.connect(libpq(db_url), application_name=name, autocommit=autocommit)
    try:
        yield conn
    finally:
        conn.close()


def bypass_rows(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(text("select * from reconciler.bypass_writes order by id")))


@pytest.fixture
def ledger(engine: Engine) -> Engine:
    """Three customers whose balances agree with one opening entry each (written by the core)."""
    core = BalanceManager(engine)
    for customer_id in (1, 2, 3):
        make_customer(engine, customer_id)
        core.update_balance(customer_id, D("100.00"), kind="opening_balance")
    return engine


@pytest.fixture
def observed(ledger: Engine) -> Engine:
    install(ledger, "observe")
    return ledger


# ---- observe ---------------------------------------------------------------------------------------------


def test_a_balance_update_around_the_core_is_recorded_with_its_writer(observed: Engine, db_url: URL) -> None:
    """A direct UPDATE of customers.balance is one row naming the application, role, statement and fingerprint."""
    with service(db_url, "legacy-billing") as conn:
        conn.execute("update customers set balance = balance + 5.00 where id = 1")
    (row,) = bypass_rows(observed)
    assert (row.table_name, row.operation, row.customer_id) == ("customers", "UPDATE", 1)
    assert (row.old_balance, row.new_balance, row.delta) == (D("100.00"), D("105.00"), D("5.00"))
    assert row.application_name == "legacy-billing" and row.role == "postgres" and row.backend_pid > 0
    assert row.statement == "update customers set balance = balance + 5.00 where id = 1"
    assert row.fingerprint == "update customers set balance = balance + ? where id = ?"
    assert row.breaks_ledger is True and row.refused is False and row.txid > 0


@pytest.mark.parametrize("kind", ["insert", "update", "delete", "copy"])
def test_each_kind_of_entry_write_around_the_core_is_recorded(observed: Engine, db_url: URL, kind: str) -> None:
    """INSERT, UPDATE, DELETE (non-hardened ledger) and COPY into entries are each recorded with the entry."""
    soften_ledger(observed)
    with observed.connect() as conn:
        entry_id = conn.execute(text("select id from customer_ledger_entries where customer_id = 2")).scalar_one()
    with service(db_url, "support-tool") as conn:
        if kind == "insert":
            conn.execute("insert into customer_ledger_entries (customer_id, amount, kind) values (2, 7.50, 'fix')")
        elif kind == "update":
            conn.execute("update customer_ledger_entries set amount = 90.00 where id = %s", (entry_id,))
        elif kind == "delete":
            conn.execute("delete from customer_ledger_entries where id = %s", (entry_id,))
        else:
            with conn.cursor().copy("copy customer_ledger_entries (customer_id, amount, kind) from stdin") as copy:
                copy.write_row((2, D("7.50"), "import"))
                copy.write_row((2, D("2.50"), "import"))
    rows = bypass_rows(observed)
    expected = {"insert": [("INSERT", D("7.50"))], "update": [("UPDATE", D("-10.00"))],
                "delete": [("DELETE", D("-100.00"))], "copy": [("INSERT", D("7.50")), ("INSERT", D("2.50"))]}[kind]
    assert [(r.operation, r.delta) for r in rows] == expected
    assert {(r.table_name, r.customer_id, r.application_name, r.breaks_ledger) for r in rows} == {
        ("customer_ledger_entries", 2, "support-tool", True)}
    assert all(r.entry_id is not None and r.fingerprint for r in rows)
    if kind == "copy":
        assert rows[0].fingerprint.startswith("copy customer_ledger_entries")


def test_a_legacy_writer_keeping_the_chain_is_recorded_but_breaks_nothing(observed: Engine, db_url: URL) -> None:
    """UPDATE + INSERT with a correct balance_after in one transaction: two rows, breaks_ledger false, no task."""
    with service(db_url, "legacy-billing", autocommit=False) as conn:
        conn.execute("update customers set balance = balance + 10.00 where id = 1")
        conn.execute("insert into customer_ledger_entries (customer_id, amount, kind, balance_after) "
                     "values (1, 10.00, 'legacy', 110.00)")
        conn.commit()
    rows = bypass_rows(observed)
    assert [(r.table_name, r.breaks_ledger) for r in rows] == [("customers", False), ("customer_ledger_entries", False)]
    assert len({r.txid for r in rows}) == 1
    with observed.connect() as conn:
        assert list_tasks(conn) == []


def test_a_rolled_back_bypass_leaves_nothing_behind(observed: Engine, db_url: URL) -> None:
    """A bypass write whose transaction rolls back leaves no bypass row and no task."""
    with service(db_url, "legacy-billing", autocommit=False) as conn:
        conn.execute("update customers set balance = 0 where id = 1")
        conn.rollback()
    assert bypass_rows(observed) == []
    with observed.connect() as conn:
        assert list_tasks(conn) == []


def test_statements_differing_only_in_literals_share_one_fingerprint(observed: Engine, db_url: URL) -> None:
    """Literals, parameters, IN lists and spacing are normalised: one code path is one fingerprint."""
    with service(db_url, "legacy-billing") as conn:
        conn.execute("update customers set balance = balance - 1.25 where id = 1")
        conn.execute("UPDATE customers  SET balance = balance - 300 WHERE id = 2 -- nightly fix")
        conn.execute("update customers set balance = balance - %s where id = %s", (D("4.00"), 3))
        conn.execute("update customers set balance = balance - 2 where id in (1, 2, 3)")
        conn.execute("update customers set balance = balance - 2 where id in (3)")
    rows = bypass_rows(observed)
    assert len(rows) == 7
    assert {r.fingerprint for r in rows[:3]} == {"update customers set balance = balance - ? where id = ?"}
    assert {r.fingerprint for r in rows[3:]} == {"update customers set balance = balance - ? where id in (?)"}


@pytest.mark.parametrize("mode", ["observe", "enforce"])
def test_the_cores_own_writes_are_never_recorded(ledger: Engine, mode: str) -> None:
    """Every path of the core (fast, locked, transfer, both reconciliation policies) writes without a bypass row."""
    with ledger.begin() as conn:  # drift planted before the guard is on: the core's locked path and settlements
        conn.execute(text("update customers set balance = balance + 3 where id in (2, 3)"))
    install(ledger, mode)
    core = BalanceManager(ledger)
    core.update_balance(1, D("5.00"), kind="payment")
    core.transfer(1, 2, D("1.00"))
    core.update_balance(3, D("1.00"), kind="payment")  # off the chain: the locked path, and a realtime task
    core.reconcile_balance(2, "ledger")
    core.reconcile_balance(3, "balance")
    assert core.stats()["locked_path"] >= 1
    assert bypass_rows(ledger) == []
    assert cached_balance(ledger, 3) == ledger_sum(ledger, 3)


def test_observe_never_breaks_the_writers_transaction(observed: Engine, db_url: URL) -> None:
    """A failure inside the capture is a WARNING; the writer's change still commits."""
    with observed.begin() as conn:
        conn.execute(text("alter table reconciler.bypass_writes add constraint ck_broken check (false) not valid"))
    warnings: list[str] = []
    with service(db_url, "legacy-billing") as conn:
        conn.add_notice_handler(lambda notice: warnings.append(notice.message_primary or ""))
        conn.execute("update customers set balance = 1.00 where id = 1")
    assert cached_balance(observed, 1) == D("1.00")
    assert bypass_rows(observed) == []
    assert any("reconciler guard" in w and "not recorded" in w for w in warnings)


def test_a_bypass_that_breaks_the_ledger_opens_a_bypass_task_at_once(observed: Engine, db_url: URL) -> None:
    """Before any run, the customer has an open task with source 'bypass', the bypass row as evidence and an
    opening event; a second bypass updates that task, never a second one."""
    with service(db_url, "legacy-billing") as conn:
        conn.execute("update customers set balance = balance + 25.00 where id = 3")
    with observed.connect() as conn:
        (task,) = list_tasks(conn)
    (row,) = bypass_rows(observed)
    assert (task.customer_id, task.status, task.source, task.run_id) == (3, "open", "bypass", None)
    assert (task.stored_balance, task.ledger_sum, task.drift) == (D("125.00"), D("100.00"), D("25.00"))
    assert task.cause == "balance_written_around_ledger"
    assert task.evidence is not None and task.evidence["bypass_write_ids"] == [row.id]
    assert task.evidence["writers"][0]["application_name"] == "legacy-billing"
    assert [e["action"] for e in task.events] == ["open"] and task.events[0]["to"] == "open"

    with service(db_url, "support-tool") as conn:
        conn.execute("insert into customer_ledger_entries (customer_id, amount, kind) values (3, 5.00, 'fix')")
    with observed.connect() as conn:
        (task,) = list_tasks(conn)
    assert task.drift == D("20.00") and task.source == "bypass"
    assert [e["action"] for e in task.events] == ["open", "update"]
    assert [w["application_name"] for w in task.evidence["writers"]] == ["legacy-billing", "support-tool"]


def test_a_service_holding_its_own_row_lock_is_not_deadlocked_by_the_capture(observed: Engine, db_url: URL) -> None:
    """A service holds FOR UPDATE on a customer and writes around the core: the capture and the check at
    commit finish without waiting (lock_timeout would fire), while the core keeps writing other customers."""
    core = BalanceManager(observed)
    with service(db_url, "legacy-billing", autocommit=False) as conn:
        conn.execute("set lock_timeout = '1s'")
        conn.execute("select balance from customers where id = 1 for update")
        conn.execute("update customers set balance = balance + 1 where id = 1")
        conn.execute("insert into customer_ledger_entries (customer_id, amount, kind) values (1, 2.00, 'x')")
        done = threading.Event()

        def core_elsewhere() -> None:
            core.update_balance(2, D("1.00"), kind="payment")
            done.set()

        worker = threading.Thread(target=core_elsewhere)
        worker.start()
        worker.join(timeout=30)
        assert done.is_set()
        conn.commit()
    rows = bypass_rows(observed)
    assert [(r.customer_id, r.breaks_ledger) for r in rows] == [(1, True), (1, True)]
    with observed.connect() as conn:
        assert [t.customer_id for t in list_tasks(conn)] == [1]


def test_truncating_entries_around_the_core_is_recorded(observed: Engine, db_url: URL) -> None:
    """TRUNCATE of the entries (non-hardened ledger) is one row without a customer."""
    soften_ledger(observed)
    with service(db_url, "ops-script") as conn:
        conn.execute("truncate customer_ledger_entries")
    (row,) = bypass_rows(observed)
    assert (row.table_name, row.operation, row.customer_id, row.application_name) == (
        "customer_ledger_entries", "TRUNCATE", None, "ops-script")


# ---- enforce ---------------------------------------------------------------------------------------------


BYPASSES = {
    "balance update": "update customers set balance = balance + 5 where id = 1",
    "entry insert": "insert into customer_ledger_entries (customer_id, amount, kind) values (1, 5, 'x')",
    "entry update": "update customer_ledger_entries set amount = 1 where customer_id = 1",
    "entry delete": "delete from customer_ledger_entries where customer_id = 1",
}


@pytest.mark.parametrize("name", [*BYPASSES, "copy", "legacy pair"])
def test_enforce_refuses_each_bypass_and_changes_nothing(ledger: Engine, db_url: URL, name: str) -> None:
    """The database refuses the write with a message naming the table, the customer and reconciler.balances."""
    soften_ledger(ledger)
    install(ledger, "enforce")
    before = (cached_balance(ledger, 1), ledger_sum(ledger, 1))
    with service(db_url, "legacy-billing") as conn, pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
        if name == "copy":
            with conn.cursor().copy("copy customer_ledger_entries (customer_id, amount, kind) from stdin") as copy:
                copy.write_row((1, D("5.00"), "import"))
        elif name == "legacy pair":
            with conn.transaction():
                conn.execute("insert into customer_ledger_entries (customer_id, amount, kind, balance_after) "
                             "values (1, 10.00, 'legacy', 110.00)")
                conn.execute("update customers set balance = balance + 10.00 where id = 1")
        else:
            conn.execute(BYPASSES[name])
    message = str(refused.value)
    assert "customer 1" in message and "reconciler.balances" in message and "legacy-billing" in message
    assert ("customers.balance" in message) or ("customer_ledger_entries" in message)
    assert (cached_balance(ledger, 1), ledger_sum(ledger, 1)) == before
    assert bypass_rows(ledger) == []


def test_the_allow_list_lets_exactly_its_application_through(ledger: Engine, db_url: URL) -> None:
    """An allow-listed application writes (recorded, not refused); any other is refused."""
    install(ledger, "enforce", ["legacy-billing"])
    with service(db_url, "legacy-billing") as conn:
        conn.execute("update customers set balance = balance + 1 where id = 1")
    with service(db_url, "legacy-billing-v2") as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("update customers set balance = balance + 1 where id = 2")
    rows = bypass_rows(ledger)
    assert [(r.application_name, r.customer_id, r.refused) for r in rows] == [("legacy-billing", 1, False)]
    assert cached_balance(ledger, 1) == D("101.00") and cached_balance(ledger, 2) == D("100.00")


# ---- the core under load, off, status --------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["observe", "enforce"])
def test_the_core_under_8_threads_keeps_working_with_no_false_bypass_rows(ledger: Engine, mode: str) -> None:
    """Eight threads of core payments and transfers on three hot customers: all succeed, none is recorded."""
    install(ledger, mode)
    core = BalanceManager(ledger, allow_negative=True)
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def work(index: int) -> None:
        barrier.wait()
        try:
            for step in range(15):
                if step % 3 == 0:
                    core.transfer(1 + index % 3, 1 + (index + 1) % 3, D("1.00"))
                else:
                    core.update_balance(1 + (index + step) % 3, D("2.00"), "add" if step % 2 else "subtract",
                                        kind="payment")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert bypass_rows(ledger) == []
    for customer_id in (1, 2, 3):
        assert cached_balance(ledger, customer_id) == ledger_sum(ledger, customer_id)
    with ledger.connect() as conn:
        assert list_tasks(conn) == []


def test_guard_off_removes_everything_it_installed(ledger: Engine) -> None:
    """After off, no trigger and no function of the guard is left; the recorded writes stay; a write is not seen."""
    install(ledger, "enforce", ["a"])
    install(ledger, "observe")
    status = uninstall(ledger)
    assert status.mode == "off" and status.triggers == ()
    with ledger.connect() as conn:
        triggers = conn.execute(text("select count(*) from pg_trigger where tgname like 'reconciler_guard%'")).scalar()
        functions = conn.execute(text("""select count(*) from pg_proc p join pg_namespace n on n.oid = p.pronamespace
                                         where n.nspname = 'reconciler' and p.proname like 'guard%'""")).scalar()
        conn.execute(text("update customers set balance = 1 where id = 1"))
        conn.commit()
    assert (triggers, functions) == (0, 0)
    assert bypass_rows(ledger) == []
    assert uninstall(ledger).mode == "off"  # idempotent


def test_switching_modes_is_idempotent_and_status_reads_the_database(ledger: Engine) -> None:
    """observe twice, then enforce with an allow-list: status reports exactly what the triggers carry."""
    assert guard_status(ledger).mode == "off"
    first = install(ledger, "observe")
    again = install(ledger, "observe")
    assert first.mode == again.mode == "observe" and again.healthy and again.missing == ()
    assert len(again.triggers) == len(guard.CAPTURE_TRIGGERS) + 1 + len(change_feed.FEED_TRIGGERS)
    status = install(ledger, "enforce", ["legacy-billing", "support-tool", "legacy-billing"])
    assert status.mode == "enforce" and status.allow == ("legacy-billing", "support-tool") and status.healthy


def test_a_disabled_trigger_is_reported_by_status(observed: Engine, db_url: URL) -> None:
    """ALTER TABLE ... DISABLE TRIGGER: status names the trigger and is not healthy; its writes are not seen."""
    with observed.begin() as conn:
        conn.execute(text("alter table customers disable trigger reconciler_guard_balance_update"))
    status = guard_status(observed)
    assert status.disabled == ("reconciler_guard_balance_update",) and not status.healthy
    assert status.to_json()["all_triggers_enabled"] is False
    with service(db_url, "legacy-billing") as conn:
        conn.execute("update customers set balance = 0 where id = 1")
    assert bypass_rows(observed) == []
    assert any("session_replication_role" in note for note in status.notes)


def test_a_hot_writer_cannot_grow_one_task_without_bound(observed: Engine, db_url: URL) -> None:
    """Many bypass writes on one customer: every one is recorded, the task keeps the latest drift and at most
    MAX_TASK_WRITERS of them as evidence."""
    with service(db_url, "legacy-billing") as conn:
        for _ in range(MAX_TASK_WRITERS + 5):
            conn.execute("update customers set balance = balance + 1 where id = 1")
    assert len(bypass_rows(observed)) == MAX_TASK_WRITERS + 5
    with observed.connect() as conn:
        (task,) = list_tasks(conn)
    assert task.drift == D(MAX_TASK_WRITERS + 5)
    assert task.evidence is not None and len(task.evidence["writers"]) == MAX_TASK_WRITERS


def test_downgrading_the_migration_removes_an_installed_guard(observed: Engine) -> None:
    """db downgrade 0005 drops the guard's functions, its triggers and the table; upgrading again is clean."""
    from reconciler import migrate

    migrate.downgrade(observed, "0005")
    with observed.connect() as conn:
        left = conn.execute(text("select count(*) from pg_trigger where tgname like 'reconciler_guard%'")).scalar()
        table = conn.execute(text("select to_regclass('reconciler.bypass_writes')")).scalar()
    assert (left, table) == (0, None)
    migrate.upgrade(observed)
    assert install(observed, "observe").healthy


def test_the_guard_never_waits_on_a_customer_locked_by_another_session(observed: Engine, db_url: URL) -> None:
    """Another session holds the core's lock (FOR NO KEY UPDATE) on a customer; a service's entry insert for that
    customer is captured, checked at commit and opens its task without waiting (lock_timeout would fire)."""
    with service(db_url, "holder", autocommit=False) as holder:
        holder.execute("select balance from customers where id = 1 for no key update")
        with service(db_url, "support-tool", autocommit=False) as conn:
            conn.execute("set lock_timeout = '1s'")
            conn.execute("insert into customer_ledger_entries (customer_id, amount, kind) values (1, 4.00, 'x')")
            conn.commit()
        holder.rollback()
    (row,) = bypass_rows(observed)
    assert (row.customer_id, row.breaks_ledger) == (1, True)
    with observed.connect() as conn:
        assert [(t.customer_id, t.source) for t in list_tasks(conn)] == [(1, "bypass")]


@pytest.mark.parametrize(("statements", "fingerprint"), [
    (["INSERT INTO customer_ledger_entries (customer_id, amount, kind) VALUES (1, 2.50, 'a'), (2, -3, 'b')",
      "insert into customer_ledger_entries (customer_id, amount, kind) values (7, 1e3, E'it''s')"],
     "insert into customer_ledger_entries (customer_id, amount, kind) values (?)"),
    (["update customers set balance = -5 where id = any($1) /* job 17 */;",
      "update customers set balance = 12.00 where id = any($9)"],
     "update customers set balance = ? where id = any(?)"),
    (["update t2 set balance = 1 where id between 3 and 4"], "update t2 set balance = ? where id between ? and ?"),
])
def test_the_fingerprint_normalises_literals_only(engine: Engine, statements: list[str], fingerprint: str) -> None:
    """Numbers, strings, parameters, comments, row lists and spacing are normalised; names (with digits) are not."""
    install(engine, "observe")
    with engine.connect() as conn:
        found = {conn.execute(text("select reconciler.guard_fingerprint(:s)"), {"s": s}).scalar() for s in statements}
    assert found == {fingerprint}


def test_a_replica_role_session_is_a_blind_spot_the_full_comparison_still_covers(observed: Engine, db_url: URL) -> None:
    """session_replication_role = replica skips the triggers (as the README says): no row, no task; the drift
    is still there for the nightly comparison to find."""
    with service(db_url, "restore-script") as conn:
        conn.execute("set session_replication_role = replica")
        conn.execute("update customers set balance = balance + 9.00 where id = 2")
    assert bypass_rows(observed) == []
    assert BalanceManager(observed).validate_balance(2).drift == D("9.00")


def test_enforce_refuses_a_truncate_around_the_core(ledger: Engine, db_url: URL) -> None:
    """TRUNCATE of the entries is refused in enforce, naming reconciler.balances; nothing is emptied."""
    soften_ledger(ledger)
    install(ledger, "enforce")
    with service(db_url, "ops-script") as conn, pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
        conn.execute("truncate customer_ledger_entries")
    assert "TRUNCATE" in str(refused.value) and "reconciler.balances" in str(refused.value)
    assert ledger_sum(ledger, 1) == D("100.00")
