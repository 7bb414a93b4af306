"""Expectation suites through Great Expectations on a real PostgreSQL: they pass on a clean ledger, fail on
each planted integrity break (naming the planted rows), store their results idempotently per run, read only
new entries after the first check, and never crash on a failing or broken expectation."""

from __future__ import annotations

import json
import re
import shutil
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from typer.testing import CliRunner

from reconciler.quality import QualitySummary, check_run_quality, expectations_dir, load_suites
from tests.factories import make_customer, post_entry

SUITES = ("balance_integrity", "ledger_entries", "reconciler_invariants")


def clean_customer(engine: Engine, customer_id: int, amounts: list[str], *, kind: str = "payment") -> None:
    """A customer whose balance equals its ledger and whose balance_after chain is the running sum."""
    total = Decimal("0.00")
    make_customer(engine, customer_id, sum((Decimal(a) for a in amounts), Decimal("0.00")))
    for amount in amounts:
        total += Decimal(amount)
        post_entry(engine, customer_id, amount, kind=kind, balance_after=total)


def start_run(engine: Engine, tolerance: str = "0.01") -> int:
    with engine.begin() as conn:
        return int(conn.execute(text(
            "insert into reconciler.runs (status, trigger, params) values ('running', 'cli', "
            "jsonb_build_object('tolerance', cast(:t as text))) returning id"), {"t": tolerance}).scalar_one())


def add_finding(engine: Engine, run_id: int, customer_id: int, stored: str, ledger: str) -> None:
    with engine.begin() as conn:
        conn.execute(text("""
            insert into reconciler.findings (run_id, customer_id, chunk_index, stored_balance, ledger_sum, drift)
            values (:r, :c, 0, :s, :l, cast(:s as numeric) - cast(:l as numeric))"""),
            {"r": run_id, "c": customer_id, "s": Decimal(stored), "l": Decimal(ledger)})


def by_name(summary: QualitySummary) -> dict[str, object]:
    return {o.expectation: o for o in summary.outcomes}


def stored(engine: Engine, run_id: int) -> dict[str, tuple[bool, dict[str, object]]]:
    with engine.connect() as conn:
        rows = conn.execute(text("select expectation, success, details from reconciler.quality_results "
                                 "where run_id = :r"), {"r": run_id}).all()
    return {r.expectation: (r.success, r.details) for r in rows}


@pytest.fixture
def clean_ledger(engine: Engine) -> Engine:
    clean_customer(engine, 1, ["100.00", "-30.50", "5.25"])
    clean_customer(engine, 2, ["10.00"], kind="deposit")
    clean_customer(engine, 3, ["1.00", "2.00"], kind="transfer_in")
    make_customer(engine, 4, "0.00")
    return engine


def test_suites_pass_on_a_clean_ledger_and_results_are_stored(clean_ledger: Engine, tmp_path: Path) -> None:
    """Every expectation of every suite passes on clean data; each result is a row of the run; Data Docs exist."""
    run_id = start_run(clean_ledger)
    summary = check_run_quality(clean_ledger, run_id, tmp_path)
    assert summary.success and summary.failed == 0 and summary.warnings == 0
    assert summary.evaluated == sum(len(s.data["expectations"]) for s in load_suites()) >= 10
    assert {o.suite for o in summary.outcomes} == set(SUITES)
    assert all(o.observed == 0 and o.error is None for o in summary.outcomes), summary.outcomes
    rows = stored(clean_ledger, run_id)
    assert len(rows) == summary.evaluated and all(ok for ok, _ in rows.values())
    assert summary.data_docs_path == tmp_path / "data_docs" / "index.html"
    assert summary.data_docs_path.exists()
    assert list((tmp_path / "data_docs" / "validations").rglob("*.html"))


def test_data_docs_need_no_network(clean_ledger: Engine, tmp_path: Path) -> None:
    """No Data Docs page loads a stylesheet or script from the internet; Bootstrap, jQuery and Font Awesome
    are served from the site's own static/vendor copies (from the XStatic packages), by relative links."""
    check_run_quality(clean_ledger, start_run(clean_ledger), tmp_path)
    site = tmp_path / "data_docs"
    pages = list(site.rglob("*.html"))
    assert len(pages) >= 2
    remote = re.compile(r"<(?:link|script)\b[^>]*(?:href|src)=[\"']https?://", re.IGNORECASE)
    for page in pages:
        html = page.read_text()
        assert not remote.search(html), page
        for local in re.findall(r"(?:href|src)=\"([^\"]*static/vendor/[^\"]+)\"", html):
            assert (page.parent / local).resolve().is_file(), (page, local)
    index = (site / "index.html").read_text()
    assert 'href="static/vendor/bootstrap/css/bootstrap.min.css"' in index
    assert 'src="static/vendor/jquery/jquery.min.js"' in index
    assert (site / "static/vendor/font-awesome/webfonts/fa-solid-900.woff2").is_file()


def test_each_planted_break_fails_its_expectation(engine: Engine, tmp_path: Path) -> None:
    """Drift, null balance, out-of-range balance, null amount, unknown kind, duplicate idempotency key, broken
    chain, orphan entry, two unresolved tasks, a corrected task without audit: each fails its own expectation,
    naming the planted rows. The database's own guards are dropped first, as on an adopted ledger."""
    with engine.begin() as conn:
        conn.execute(text("alter table customers alter column balance drop not null"))
        conn.execute(text("alter table customers alter column balance type numeric"))
        conn.execute(text("alter table customer_ledger_entries alter column amount drop not null"))
        conn.execute(text("drop index ux_customer_ledger_entries_idempotency_key"))
        conn.execute(text("alter table customer_ledger_entries drop constraint "
                          "customer_ledger_entries_customer_id_fkey"))
        conn.execute(text("drop index reconciler.ux_tasks_one_unresolved_per_customer"))
    clean_customer(engine, 1, ["100.00", "-30.50"])
    make_customer(engine, 2, "15.00")
    post_entry(engine, 2, "10.00", balance_after="10.00")
    broken = post_entry(engine, 2, "5.00", balance_after="99.00")          # chain: 10.00 + 5.00 != 99.00
    unknown = post_entry(engine, 1, "1.00", kind="bogus", balance_after="70.50")
    with engine.begin() as conn:
        conn.execute(text("update customers set balance = balance + 1 where id = 1"))  # keep 1 balanced
    make_customer(engine, 3, "0.00")
    dup_a = post_entry(engine, 3, "2.00", idempotency_key="k-1")
    dup_b = post_entry(engine, 3, "-2.00", idempotency_key="k-1")
    orphan = post_entry(engine, 999, "4.00")
    with engine.begin() as conn:
        null_amount = conn.execute(text("insert into customer_ledger_entries (customer_id, amount, kind) "
                                        "values (3, null, 'payment') returning id")).scalar_one()
        conn.execute(text("insert into customers (id, balance) values (5, null), (6, 0.001)"))
    make_customer(engine, 7, "50.00")                                         # drift: ledger sum is 0.00
    run_id = start_run(engine)
    add_finding(engine, run_id, 7, "50.00", "0.00")
    with engine.begin() as conn:
        conn.execute(text("""
            insert into reconciler.tasks (run_id, customer_id, stored_balance, ledger_sum, drift, status)
            values (:r, 7, 50, 0, 50, 'open'), (:r, 7, 50, 0, 50, 'needs_review')"""), {"r": run_id})
        bare = conn.execute(text("""
            insert into reconciler.tasks (run_id, customer_id, stored_balance, ledger_sum, drift, status,
                                          resolved_at, resolution)
            values (:r, 1, 1, 0, 1, 'corrected', now(), '{"events": []}') returning id"""),
            {"r": run_id}).scalar_one()
    summary = check_run_quality(engine, run_id, tmp_path)
    outcomes = by_name(summary)

    def failed_rows(name: str, key: str) -> set[object]:
        outcome = outcomes[name]
        assert not outcome.success, name  # type: ignore[attr-defined]
        return {row[key] for row in outcome.sample}  # type: ignore[attr-defined]

    assert failed_rows("balance_matches_ledger", "customer_id") == {7}
    assert outcomes["balance_matches_ledger"].severity == "warning"  # type: ignore[attr-defined]
    assert failed_rows("balance_not_null", "customer_id") == {5}
    assert failed_rows("balance_within_numeric_18_2", "customer_id") == {6}
    assert failed_rows("entry_customer_and_amount_not_null", "entry_id") == {null_amount}
    assert failed_rows("entry_kind_known", "entry_id") == {unknown}
    assert failed_rows("idempotency_key_unique", "idempotency_key") == {"k-1"}
    assert failed_rows("balance_after_chain_unbroken", "entry_id") == {broken}
    assert failed_rows("entry_customer_exists", "entry_id") == {orphan}
    assert failed_rows("one_unresolved_task_per_customer", "customer_id") == {7}
    assert failed_rows("corrected_task_has_audit", "task_id") == {bare}
    assert summary.failed == summary.evaluated - 1 and summary.warnings == 1 and not summary.success
    assert {dup_a, dup_b}  # the duplicate pair exists side by side
    assert stored(engine, run_id)["entry_kind_known"][1]["sample"][0]["kind"] == "bogus"  # type: ignore[index]


def test_guards_make_constraint_backed_checks_free(engine: Engine) -> None:
    """With the database's constraints in place, the constraint-backed queries are cut off by a one-time
    filter: PostgreSQL never scans the table (the plan shows the gate)."""
    spec = next(s for s in load_suites() if s.name == "ledger_entries")
    query = next(e for e in spec.data["expectations"] if e["meta"]["name"] == "entry_customer_exists")
    sql = query["kwargs"]["unexpected_rows_query"].replace("{batch}", "public.customer_ledger_entries")
    with engine.connect() as conn:
        plan = "\n".join(row[0] for row in conn.execute(text("explain (analyze, costs off) " + sql)))
    assert "One-Time Filter" in plan
    assert "(never executed)" in plan


def test_later_checks_read_only_new_entries(clean_ledger: Engine, tmp_path: Path) -> None:
    """After a check, the next run's kind and chain checks read the entries appended since (a break already
    reported is not read again; a new one is caught); the window is stored with the result, and a rerun of a
    run reads the same window and replaces that run's rows only."""
    post_entry(clean_ledger, 4, "1.00", kind="bogus")
    first = start_run(clean_ledger)
    one = check_run_quality(clean_ledger, first, tmp_path / "1")
    assert not by_name(one)["entry_kind_known"].success  # type: ignore[attr-defined]
    second = start_run(clean_ledger)
    two = check_run_quality(clean_ledger, second, tmp_path / "2")
    window = by_name(two)["entry_kind_known"].window  # type: ignore[attr-defined]
    # No clock lag: the first check's entries (all committed when it read them) are not read again.
    assert window["entries_after"] == by_name(one)["entry_kind_known"].window["entries_through"] > 0  # type: ignore[attr-defined]
    assert by_name(two)["entry_kind_known"].success  # type: ignore[attr-defined]
    third = start_run(clean_ledger)
    three = check_run_quality(clean_ledger, third, tmp_path / "3")
    kinds = by_name(three)["entry_kind_known"]
    assert kinds.success and kinds.window["entries_after"] > 0  # type: ignore[attr-defined]
    fresh = post_entry(clean_ledger, 1, "2.00", kind="mystery", balance_after="80.00")  # 74.75 + 2.00
    fourth = start_run(clean_ledger)
    four = by_name(check_run_quality(clean_ledger, fourth, tmp_path / "4"))
    assert {row["entry_id"] for row in four["entry_kind_known"].sample} == {fresh}  # type: ignore[attr-defined]
    assert {row["entry_id"] for row in four["balance_after_chain_unbroken"].sample} == {fresh}  # type: ignore[attr-defined]
    again = check_run_quality(clean_ledger, fourth, tmp_path / "4")  # a rerun replaces the run's rows
    reread, first_read = by_name(again)["entry_kind_known"].window, four["entry_kind_known"].window  # type: ignore[attr-defined]
    assert (reread["entries_after"], reread["entries_through"]) == (first_read["entries_after"],
                                                                    first_read["entries_through"])
    assert len(stored(clean_ledger, fourth)) == again.evaluated == len(stored(clean_ledger, first))


def test_a_broken_expectation_is_a_failed_result_not_a_crash(clean_ledger: Engine, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """An expectation whose SQL fails in PostgreSQL is stored as a failed critical result with the error."""
    suites = tmp_path / "suites"
    shutil.copytree(expectations_dir(), suites)
    path = suites / "reconciler_invariants.json"
    data = json.loads(path.read_text())
    broken_sql = "SELECT no_such_column FROM (SELECT * FROM {batch}) AS t"
    data["expectations"][0]["kwargs"]["unexpected_rows_query"] = broken_sql
    path.write_text(json.dumps(data))
    monkeypatch.setenv("RECONCILER_EXPECTATIONS_DIR", str(suites))
    run_id = start_run(clean_ledger)
    summary = check_run_quality(clean_ledger, run_id, tmp_path / "out")
    broken = by_name(summary)["one_unresolved_task_per_customer"]
    assert not broken.success and broken.severity == "critical"  # type: ignore[attr-defined]
    assert "no_such_column" in (broken.error or "")  # type: ignore[attr-defined]
    assert summary.failed == 1
    assert stored(clean_ledger, run_id)["one_unresolved_task_per_customer"][0] is False


def test_every_suite_query_follows_the_batch_convention() -> None:
    """GX renders {batch} as a bare subquery when the SQL has a JOIN and as an aliased one otherwise, so a query
    with a JOIN writes `{batch} AS x` and one without writes `(SELECT * FROM {batch}) AS x`."""
    for spec in load_suites():
        for expectation in spec.data["expectations"]:
            query = expectation["kwargs"]["unexpected_rows_query"]
            if re.search(r"\bJOIN\b", re.sub(r"'[^']*'", "", query), re.IGNORECASE):
                assert re.search(r"FROM \{batch\} AS \w+", query), expectation["meta"]["name"]
            else:
                assert "(SELECT * FROM {batch}) AS" in query, expectation["meta"]["name"]


def test_quality_cli_exit_codes(clean_ledger: Engine, database_env: object) -> None:
    """`reconciler quality --json` exits 0 when all pass and 1 when a critical expectation fails."""
    from reconciler.cli import app

    run_id = start_run(clean_ledger)
    runner = CliRunner()
    ok = runner.invoke(app, ["quality", "--run", str(run_id), "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["success"] is True
    post_entry(clean_ledger, 4, "3.00", kind="bogus")
    bad = runner.invoke(app, ["quality", "--json"])  # the latest run by default
    assert bad.exit_code == 1, bad.output
    payload = json.loads(bad.stdout)
    assert payload["run_id"] == run_id and payload["failed"] == 1
    missing = runner.invoke(app, ["quality", "--run", "999"])
    assert missing.exit_code == 2 and "run 999 does not exist" in missing.output


@pytest.mark.parametrize("value", ["1; drop table customers", True, 1.5, None, Decimal("NaN")])
def test_only_numbers_and_aware_times_are_rendered_into_sql(value: object) -> None:
    """Run values rendered into a suite's SQL are ints, finite Decimals or aware datetimes; anything else
    (text, bools, floats, None, NaN) is refused."""
    from reconciler.errors import InvalidOperationError
    from reconciler.quality import sql_literal

    with pytest.raises(InvalidOperationError):
        sql_literal(value)


def test_placeholders_render_and_unknown_ones_are_refused() -> None:
    """$names become literals; a placeholder the module does not know is an error naming it."""
    import datetime as dt

    from reconciler.errors import InvalidOperationError
    from reconciler.quality import render_query

    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    sql = render_query("x > $a AND y > $b AND z >= $c AND {batch}", {"a": 5, "b": Decimal("0.01"), "c": when})
    assert sql == "x > 5 AND y > 0.01 AND z >= timestamptz '2026-01-02T03:04:05+00:00' AND {batch}"
    with pytest.raises(InvalidOperationError, match="unknown placeholder"):
        render_query("x > $nope", {"a": 1})


def test_socket_urls_get_a_host_gx_accepts() -> None:
    """A Unix-socket URL (host only in ?host=) gets host=localhost for GX; TCP URLs keep their host."""
    from sqlalchemy.engine import make_url

    from reconciler.quality import gx_connection_string

    socket = gx_connection_string(make_url("postgresql://postgres@/ledger?host=/tmp/pg"))
    assert socket.startswith("postgresql+psycopg://postgres@localhost/ledger?host=")
    tcp = gx_connection_string(make_url("postgresql+psycopg://u:p@db.example:5433/ledger"))
    assert tcp == "postgresql+psycopg://u:p@db.example:5433/ledger"


def test_an_entry_of_a_transaction_open_at_check_time_is_read_next_time(clean_ledger: Engine, tmp_path: Path,
                                                                        db_url: object) -> None:
    """An entry whose transaction is still open while a check reads (an id below a later, committed one) is
    read by the next check once committed: the window goes by ids and snapshot visibility, not by time."""
    import psycopg

    dsn = clean_ledger.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn) as slow:
        slow_id = slow.execute("insert into customer_ledger_entries (customer_id, amount, kind) "
                               "values (4, 1.00, 'slowpoke') returning id").fetchone()[0]  # type: ignore[index]
        later = post_entry(clean_ledger, 1, "0.01", kind="deposit")  # committed, with a higher id
        assert later > slow_id
        first = start_run(clean_ledger)
        one = by_name(check_run_quality(clean_ledger, first, tmp_path / "1"))
        assert one["entry_kind_known"].success  # type: ignore[attr-defined]  (the open entry is invisible)
        slow.commit()
    second = start_run(clean_ledger)
    two = by_name(check_run_quality(clean_ledger, second, tmp_path / "2"))
    assert two["entry_kind_known"].window["entries_after"] < slow_id  # type: ignore[attr-defined]
    assert {row["entry_id"] for row in two["entry_kind_known"].sample} == {slow_id}  # type: ignore[attr-defined]
