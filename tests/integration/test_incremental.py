"""Incremental runs against real PostgreSQL: an incremental run compares only the customers touched since the
last verified point, and finds exactly what a full run finds, by every route the guard sees; changes of
transactions still open at the run's snapshot are found by this run or the next, never by neither; a write
made with the triggers disabled is missed by incremental runs and found by the next full sweep."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL

from reconciler import change_feed
from reconciler.balances import BalanceManager
from reconciler.compare import compare_all
from reconciler.guard import install, uninstall
from reconciler.pipeline import RunOptions, RunSummary, run_reconciliation, steps
from tests.factories import BYPASS_ROUTES, make_customer, soften_ledger, write_around_core
from tests.fix_runs import dry_run, found, guarded_ledger

D = Decimal
pytestmark = pytest.mark.usefixtures("quick_quality_and_report")
CUSTOMERS = range(1, 21)


def run(engine: Engine, mode: str, **options: Any) -> RunSummary:
    return dry_run(engine, mode, chunk_size=7, **options)


def checked(engine: Engine, run_id: int) -> set[int]:
    """The customers an incremental run compared (its chunks' ids)."""
    with engine.connect() as conn:
        rows = conn.execute(text("select unnest(customer_ids) from reconciler.run_chunks where run_id = :r"),
                            {"r": run_id}).scalars()
        return {int(i) for i in rows}


def drifting_now(engine: Engine) -> set[int]:
    with engine.connect() as conn:
        return {d.customer_id for d in compare_all(conn, D("0.01"))}


@pytest.fixture
def guarded(engine: Engine) -> Engine:
    """Customers 1..20 with honest ledgers written by the core, the guard observing, a soft ledger, and a
    first full run that sets the verified point."""
    soften_ledger(engine)
    guarded_ledger(engine, CUSTOMERS, D("100.00"), chunk_size=7)
    return engine


def libpq(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.mark.parametrize("route", BYPASS_ROUTES)
def test_incremental_finds_exactly_what_full_finds_for_each_route(guarded: Engine, route: str) -> None:
    """A drift planted after the verified point by any route is found by an incremental run that checks only
    the touched customer, and a full run finds the same drift and nothing else."""
    write_around_core(guarded, route, 7, "5.00")
    incremental = run(guarded, "incremental")
    assert incremental.mode == "incremental", incremental.mode_reason
    assert incremental.customers_checked == 1
    full = run(guarded, "full")
    assert found(guarded, incremental.run_id) == found(guarded, full.run_id) == {7}
    assert incremental.verified_from is not None and incremental.verified_to is not None


def test_core_writes_are_fed_and_clean_touched_customers_open_nothing(guarded: Engine) -> None:
    """Customers touched through the core are compared by the next incremental run; being clean, they open
    and close nothing; untouched customers are not compared at all."""
    core = BalanceManager(guarded)
    core.update_balance(3, D("1.00"), kind="payment")
    core.transfer(4, 5, D("2.00"))
    summary = run(guarded, "incremental")
    assert summary.mode == "incremental"
    assert checked(guarded, summary.run_id) == {3, 4, 5}
    assert summary.customers_checked == 3 and summary.drift_count == 0
    with guarded.connect() as conn:
        assert conn.execute(text("select count(*) from reconciler.tasks")).scalar_one() == 0
    again = run(guarded, "incremental")
    assert again.customers_checked == 0, "the verified point moved past those changes"


def test_the_feed_holds_one_row_per_customer_per_transaction_and_is_pruned(guarded: Engine) -> None:
    """Many rows of one customer in one transaction are one feed row; a run's verified point prunes them."""
    with guarded.begin() as conn:
        conn.execute(text("""insert into customer_ledger_entries (customer_id, amount, kind)
                             select 9, 1.00, 'legacy' from generate_series(1, 50)"""))
        conn.execute(text("update customers set balance = balance + 50 where id = 9"))
    with guarded.connect() as conn:
        assert conn.execute(text("select count(*) from reconciler.change_feed where customer_id = 9")).scalar_one() == 1
    summary = run(guarded, "incremental")
    assert summary.customers_checked == 1 and summary.drift_count == 0
    with guarded.connect() as conn:
        assert change_feed.feed_size(conn) == 0


def test_a_drift_that_vanished_is_dismissed_by_the_incremental_run(guarded: Engine) -> None:
    """A drift found earlier and undone since (a touch) is seen clean and its task dismissed."""
    write_around_core(guarded, "balance", 2, "9.00")
    first = run(guarded, "incremental")
    assert found(guarded, first.run_id) == {2}
    write_around_core(guarded, "balance", 2, "-9.00")
    second = run(guarded, "incremental")
    assert second.drift_count == 0 and second.customers_checked == 1
    with guarded.connect() as conn:
        statuses = set(conn.execute(text("select status from reconciler.tasks where customer_id = 2")).scalars())
    assert statuses == {"dismissed"}


def test_a_write_committing_while_the_run_compares_is_found_by_this_run_or_the_next(
        guarded: Engine, db_url: URL, monkeypatch: pytest.MonkeyPatch) -> None:
    """A transaction open when the incremental run takes its snapshot commits while the run compares: it is
    not in this run's verified point, so the next incremental run checks and finds it."""
    writer = psycopg.connect(libpq(db_url), application_name="legacy-billing")
    writer.execute("update customers set balance = balance + 4 where id = 11")  # open, uncommitted
    write_around_core(guarded, "balance", 12, "3.00")  # committed before the run: in its scope
    committed = threading.Event()
    real = steps.compare_chunk_totals

    def compare_then_commit(*args: Any, **kwargs: Any) -> Any:
        if not committed.is_set():
            writer.commit()  # the write commits after the snapshot, before this comparison
            committed.set()
        return real(*args, **kwargs)

    monkeypatch.setattr(steps, "compare_chunk_totals", compare_then_commit)
    try:
        first = run(guarded, "incremental", workers=1)
    finally:
        writer.close()
    assert committed.is_set()
    assert 12 in found(guarded, first.run_id) and 11 not in checked(guarded, first.run_id)
    monkeypatch.setattr(steps, "compare_chunk_totals", real)
    second = run(guarded, "incremental")
    assert 11 in checked(guarded, second.run_id)
    assert found(guarded, second.run_id) == {11, 12}, "12 still drifts (dry runs); 11 is found now"
    assert drifting_now(guarded) == {11, 12}


def test_a_write_open_during_the_whole_run_is_found_by_the_next(guarded: Engine, db_url: URL) -> None:
    """A transaction that stays open through a whole incremental run (holding the customer's row lock) is
    picked up by the first run after it commits, never lost."""
    writer = psycopg.connect(libpq(db_url), application_name="support-tool")
    try:
        writer.execute("insert into customer_ledger_entries (customer_id, amount, kind) values (13, 6, 'legacy')")
        writer.execute("select 1 from customers where id = 13 for update")
        during = run(guarded, "incremental")
        assert 13 not in found(guarded, during.run_id)
        writer.commit()
    finally:
        writer.close()
    after = run(guarded, "incremental")
    assert found(guarded, after.run_id) == {13}


def test_a_drift_written_with_triggers_disabled_is_missed_by_incremental_and_found_by_the_full_sweep(
        guarded: Engine) -> None:
    """session_replication_role = replica silences the guard and its feed: incremental runs miss that drift
    (the documented blind spot), the next full sweep finds it."""
    with guarded.begin() as conn:
        conn.execute(text("set local session_replication_role = replica"))
        conn.execute(text("update customers set balance = balance + 8 where id = 15"))
    incremental = run(guarded, "incremental")
    assert incremental.mode == "incremental" and incremental.drift_count == 0
    sweep = run(guarded, "full")
    assert found(guarded, sweep.run_id) == {15}


def test_a_disabled_trigger_makes_the_run_full_and_says_why(guarded: Engine) -> None:
    """While the guard reports a disabled trigger, an incremental run runs full and records why; a
    reinstalled feed has no verified point, so the next run is full too."""
    with guarded.begin() as conn:
        conn.execute(text("alter table customers disable trigger reconciler_guard_feed_customers_update"))
    summary = run(guarded, "incremental")
    assert summary.mode == "full" and summary.customers_checked == len(CUSTOMERS)
    assert summary.mode_reason is not None and "reconciler_guard_feed_customers_update" in summary.mode_reason
    assert summary.verified_to is None, "a feed with a hole verifies nothing"
    install(guarded, "observe")
    again = run(guarded, "incremental")
    assert again.mode == "full" and again.mode_reason is not None and "no verified point" in again.mode_reason


def test_without_the_guard_incremental_falls_back_to_full(guarded: Engine) -> None:
    """With the guard off there is no feed: incremental runs full and records why; not an error."""
    uninstall(guarded)
    summary = run(guarded, "incremental")
    assert summary.status == "succeeded" and summary.mode == "full"
    assert summary.mode_reason is not None and "guard is off" in summary.mode_reason
    assert summary.customers_checked == len(CUSTOMERS)


def test_a_truncate_makes_the_next_run_full(guarded: Engine) -> None:
    """A TRUNCATE of the entries touches every customer: the next incremental run is full."""
    with guarded.begin() as conn:
        conn.execute(text("truncate customer_ledger_entries"))
    summary = run(guarded, "incremental")
    assert summary.mode == "full" and summary.mode_reason is not None and "TRUNCATE" in summary.mode_reason
    assert summary.drift_count == len(CUSTOMERS)


def test_restricted_full_runs_do_not_move_the_verified_point(guarded: Engine) -> None:
    """A full run over a range compares only that range: it verifies nothing, so changes elsewhere stay in
    the feed for the next incremental run."""
    write_around_core(guarded, "balance", 18, "2.00")
    ranged = run(guarded, "full", from_id=1, to_id=5)
    assert ranged.verified_to is None
    summary = run(guarded, "incremental")
    assert found(guarded, summary.run_id) == {18}


def test_an_incremental_run_with_unresolved_tasks_corrects_them(guarded: Engine) -> None:
    """A drift found by a dry run is corrected by the next (non-dry) incremental run, untouched since."""
    write_around_core(guarded, "insert", 6, "3.00")
    assert found(guarded, run(guarded, "incremental").run_id) == {6}
    summary = run_reconciliation(guarded, RunOptions(mode="incremental", max_drift_ratio=D(1)))
    assert summary.corrected == 1 and drifting_now(guarded) == set()


# ---- the law, over random interleavings -------------------------------------------------------------------

_operations = st.lists(st.one_of(
    st.tuples(st.just("core"), st.integers(1, 6), st.integers(1, 9)),
    st.tuples(st.sampled_from(BYPASS_ROUTES), st.integers(1, 6), st.integers(-9, 9).filter(bool)),
    st.tuples(st.just("run"), st.just(0), st.just(0)),
), min_size=1, max_size=10)


@pytest.fixture
def law_ledger(engine: Engine) -> Iterator[Engine]:
    soften_ledger(engine)
    install(engine, "observe")
    yield engine


_examples = iter(range(1_000_000))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=_operations)
def test_incremental_runs_agree_with_a_full_run_over_random_interleavings(
        law_ledger: Engine, operations: list[tuple[str, int, int]]) -> None:
    """For any interleaving of core writes, bypass writes and incremental runs, each customer's latest
    verdict from the incremental runs (drifting or clean, clean if never checked) equals what a full
    comparison finds at the end."""
    engine = law_ledger
    base = next(_examples) * 10
    core = BalanceManager(engine)
    ids = [base + i for i in range(1, 7)]
    for customer_id in ids:
        make_customer(engine, customer_id)
        core.update_balance(customer_id, D("50.00"), kind="opening_balance")
    start = run(engine, "full")
    verdict = {c: c in found(engine, start.run_id) for c in ids}
    for kind, offset, amount in [*operations, ("run", 0, 0)]:
        customer_id = base + offset
        if kind == "core":
            core.update_balance(customer_id, D(amount), kind="payment")
        elif kind == "run":
            summary = run(engine, "incremental")
            assert summary.mode == "incremental", summary.mode_reason
            drifting = found(engine, summary.run_id)
            verdict.update({c: c in drifting for c in checked(engine, summary.run_id) if c in verdict})
        else:
            write_around_core(engine, kind, customer_id, D(amount))
    assert {c for c, drifts in verdict.items() if drifts} == drifting_now(engine) & set(ids)


def test_cli_incremental_without_the_guard_says_so_in_one_line(database_env: URL) -> None:
    """`run --incremental --json` without the guard runs full, prints one line on stderr (not an error) and
    the JSON carries mode, mode_reason, customers_checked and the verified points."""
    import json

    from typer.testing import CliRunner

    from reconciler.cli import app
    from reconciler.db import make_engine

    engine = make_engine(database_env)
    try:
        for customer_id in (1, 2, 3):
            make_customer(engine, customer_id)
    finally:
        engine.dispose()
    result = CliRunner().invoke(app, ["run", "--incremental", "--json"])
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["mode"] == "full" and "guard is off" in payload["mode_reason"]
    assert payload["customers_checked"] == 3 and payload["verified_from"] is None
    assert [line for line in result.stderr.splitlines() if "incremental requested" in line] == [
        f"reconciler: {payload['mode_reason']}"]
    default = json.loads(CliRunner().invoke(app, ["run", "--json"]).stdout)
    assert default["mode"] == "full" and default["mode_reason"] == "full requested"


@pytest.mark.usefixtures("real_steps")
def test_the_report_says_mode_scope_and_verified_points(guarded: Engine, tmp_path: Any) -> None:
    """An incremental run's report names the mode, the touched customers it compared and both points; its
    book totals cover only those customers."""
    write_around_core(guarded, "balance", 4, "2.00")
    summary = run_reconciliation(guarded, RunOptions(mode="incremental", dry_run=True), report_dir=tmp_path)
    assert summary.report_path is not None
    from pathlib import Path

    html = (Path(summary.report_path) / "report.html").read_text()
    assert "incremental run" in html and "1 touched" in html
    assert str(summary.verified_from) in html and str(summary.verified_to) in html


def test_too_many_touched_customers_make_the_run_full(guarded: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Beyond MAX_INCREMENTAL_CUSTOMERS touched customers an incremental run runs full and says why."""
    monkeypatch.setattr(change_feed, "MAX_INCREMENTAL_CUSTOMERS", 2)
    for customer_id in (1, 2, 3):
        write_around_core(guarded, "balance", customer_id, "1.00")
    summary = run(guarded, "incremental")
    assert summary.mode == "full" and summary.mode_reason is not None and "3 customers touched" in summary.mode_reason
    assert found(guarded, summary.run_id) == {1, 2, 3}


def test_a_runs_own_corrections_are_not_touches_and_the_halt_counts_everyone(guarded: Engine) -> None:
    """Corrections settle balance and ledger under the row lock, so the next incremental run does not compare
    them again; the drift ratio of an incremental run is judged against every customer, as a full run's."""
    for customer_id in (2, 3):
        write_around_core(guarded, "balance", customer_id, "4.00")
    summary = run_reconciliation(guarded, RunOptions(mode="incremental", max_drift_ratio=D("0.2")))
    assert summary.status == "succeeded" and summary.corrected == 2
    again = run(guarded, "incremental")
    assert again.customers_checked == 0 and drifting_now(guarded) == set()
