"""demo seed: every plant is found by compare and explained with its kind, honest customers never drift,
same seed -> same data, and a ledger demo seed did not create is never touched."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal

import numpy as np
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL
from typer.testing import CliRunner

from reconciler import demo
from reconciler.chunks import fetch_chunks
from reconciler.compare import compare_all, compare_chunk
from reconciler.errors import DemoDataError, InvalidOperationError
from reconciler.explain import explain_drifts
from tests.factories import entry_count, make_customer, post_entry

TOLERANCE = Decimal("0.01")
SMALL = demo.SeedOptions(customers=2_000, entries_per_customer=8, drift_rate=Decimal("0.3"), seed=11)


def _fingerprint(engine: Engine) -> tuple[str, str, str]:
    """md5 of every customer, entry and plant row, in id order."""
    with engine.connect() as conn:
        return (
            conn.execute(text("select md5(string_agg(concat_ws(',', id, balance, updated_at), ';' order by id)) "
                              "from customers")).scalar_one(),
            conn.execute(text("select md5(string_agg(concat_ws(',', id, customer_id, amount, kind, reference, "
                              "balance_after, created_at), ';' order by id)) from customer_ledger_entries")
                         ).scalar_one(),
            conn.execute(text("select md5(string_agg(concat_ws(',', customer_id, kind, drift, entry_id, seed), ';' "
                              "order by customer_id)) from reconciler.demo_plants")).scalar_one(),
        )


def _triggers_enabled(engine: Engine) -> dict[str, str]:
    with engine.connect() as conn:
        rows = conn.execute(text("""select tgname, tgenabled from pg_trigger
                                    where tgrelid = 'customer_ledger_entries'::regclass and not tgisinternal"""))
        return {str(r[0]): str(r[1]) for r in rows}


def test_every_plant_is_found_and_explained_and_honest_customers_never_drift(engine: Engine) -> None:
    """Seeded at a 30% drift rate: compare finds exactly the plants (ids and drifts), explain names each kind
    with its entry, and some drifts are above the 100.00 auto-correct limit while most are below."""
    result = demo.seed(engine, SMALL)
    assert result.customers == 2_000
    with engine.connect() as conn:
        plants = {p.customer_id: p for p in demo.list_plants(conn)}
        drifts = [d for chunk in fetch_chunks(conn, 300) for d in compare_chunk(conn, chunk, TOLERANCE)]
        explained = explain_drifts(conn, drifts)
    assert set(result.plants) == set(demo.PLANT_KINDS)
    assert all(count >= 50 for count in result.plants.values()), result.plants
    assert {d.customer_id: d.drift for d in drifts} == {cid: p.drift for cid, p in plants.items()}
    wrong = {cid: (p.kind, explained[cid].cause, p.entry_id, explained[cid].evidence)
             for cid, p in plants.items()
             if explained[cid].cause != p.kind
             or (p.entry_id is not None and p.entry_id not in explained[cid].evidence["entry_ids"])}  # type: ignore[operator]
    assert wrong == {}
    large = sum(1 for p in plants.values() if abs(p.drift) > Decimal("100.00"))
    assert 0.1 * len(plants) < large < 0.4 * len(plants)
    assert Counter(p.kind for p in plants.values()) == result.plants


def test_honest_ledgers_have_a_correct_balance_after_chain(engine: Engine) -> None:
    """For every customer not planted, balance == SUM(entries) and each balance_after is the running sum;
    the entry id sequence continues after the seed."""
    demo.seed(engine, demo.SeedOptions(customers=300, entries_per_customer=6, drift_rate=Decimal("0.1"), seed=3))
    with engine.connect() as conn:
        broken = conn.execute(text("""
            select count(*) from (
                select e.customer_id, e.balance_after,
                       sum(e.amount) over (partition by e.customer_id order by e.id) as running
                from customer_ledger_entries e
                where e.customer_id not in (select customer_id from reconciler.demo_plants)) x
            where balance_after <> running""")).scalar_one()
        planted = conn.execute(text("select count(*) from reconciler.demo_plants")).scalar_one()
        negative = conn.execute(text("""select count(*) from customers c where c.id not in
                                        (select customer_id from reconciler.demo_plants) and c.balance < 0""")
                                ).scalar_one()
        drifting = len(compare_all(conn, Decimal("0")))
    assert broken == 0
    assert negative == 0
    assert drifting == planted > 0
    new_id = post_entry(engine, 1, "1.00")  # the identity continues after the copied ids
    assert new_id == entry_count(engine)


def test_same_seed_gives_the_same_data_and_reset_replaces_it(engine: Engine) -> None:
    """Seeding twice with one seed (via --reset) gives identical rows; another seed gives other rows; the
    append-only triggers are enabled again after the reset."""
    options = demo.SeedOptions(customers=1_500, entries_per_customer=4, drift_rate=Decimal("0.05"), seed=5)
    demo.seed(engine, options)
    first = _fingerprint(engine)
    before = _triggers_enabled(engine)
    again = demo.seed(engine, demo.SeedOptions(**{**options.__dict__, "reset": True}))
    assert again.reset
    assert _fingerprint(engine) == first
    assert _triggers_enabled(engine) == before == {"reconciler_append_only": "O",
                                                   "reconciler_append_only_truncate": "O"}
    demo.seed(engine, demo.SeedOptions(**{**options.__dict__, "seed": 6, "reset": True}))
    assert _fingerprint(engine)[1] != first[1]
    with pytest.raises(Exception, match="append-only"), engine.begin() as conn:
        conn.execute(text("delete from customer_ledger_entries"))


def _schema_of_entries(engine: Engine) -> set[tuple[str, str]]:
    with engine.connect() as conn:
        indexes = conn.execute(text("""select indexrelid::regclass::text, pg_get_indexdef(indexrelid) from pg_index
                                       where indrelid = 'customer_ledger_entries'::regclass and indisvalid""")).all()
        constraints = conn.execute(text("""select conname, pg_get_constraintdef(oid) || ' ' || convalidated from
                                           pg_constraint where conrelid = 'customer_ledger_entries'::regclass""")).all()
    return {(str(a), str(b)) for a, b in [*indexes, *constraints]}


def test_seed_restores_every_index_and_constraint_of_the_entries(engine: Engine) -> None:
    """The bulk load drops the entries' indexes and keys and rebuilds them exactly (names, definitions,
    validated); the foreign key still refuses an entry without a customer."""
    before = _schema_of_entries(engine)
    assert ("ix_customer_ledger_entries_customer_cover",
            "CREATE INDEX ix_customer_ledger_entries_customer_cover ON public.customer_ledger_entries "
            "USING btree (customer_id, id) INCLUDE (amount)") in before
    demo.seed(engine, demo.SeedOptions(customers=200, entries_per_customer=3, seed=1))
    assert _schema_of_entries(engine) == before
    demo.seed(engine, demo.SeedOptions(customers=100, entries_per_customer=2, seed=1, reset=True))
    assert _schema_of_entries(engine) == before
    with pytest.raises(Exception, match="foreign key"), engine.begin() as conn:
        conn.execute(text("insert into customer_ledger_entries (customer_id, amount, kind) values (999999, 1, 'x')"))


def test_seed_is_independent_of_the_database(engine: Engine) -> None:
    """The generated batch is a pure function of the options (no clock, no database state)."""
    first = demo.generate_batch(SMALL, 0, 1)
    second = demo.generate_batch(SMALL, 0, 1)
    assert demo.encode_entries(first) == demo.encode_entries(second)
    assert demo.encode_customers(first) == demo.encode_customers(second)
    assert first.plants == second.plants


def test_seeding_over_a_ledger_it_did_not_create_is_refused_and_changes_nothing(engine: Engine) -> None:
    """A company's ledger (or any non-demo rows) is refused, with and without --reset, and left as it was."""
    make_customer(engine, 1, "10.00")
    post_entry(engine, 1, "10.00", balance_after="10.00")
    before = _fingerprint(engine)
    with pytest.raises(DemoDataError, match="only writes into an empty ledger"):
        demo.seed(engine, SMALL)
    with pytest.raises(DemoDataError, match="did not create"):
        demo.seed(engine, demo.SeedOptions(customers=10, reset=True))
    assert _fingerprint(engine) == before
    assert set(_triggers_enabled(engine).values()) == {"O"}


def test_customers_without_entries_also_block_the_seed(engine: Engine) -> None:
    """A ledger with customers but no entries is not empty: refused without --reset and with it."""
    make_customer(engine, 5, "0.00")
    for reset in (False, True):
        with pytest.raises(DemoDataError):
            demo.seed(engine, demo.SeedOptions(customers=10, reset=reset))
    assert entry_count(engine) == 0


@pytest.mark.parametrize(("field", "value"), [
    ("customers", 0), ("entries_per_customer", -1), ("drift_rate", Decimal("1.5")), ("drift_rate", 0.1),
    ("seed", -1)])
def test_bad_options_are_named_errors(field: str, value: object) -> None:
    """Each bad option raises InvalidOperationError naming its flag."""
    with pytest.raises(InvalidOperationError, match=f"--{field.replace('_', '-')}"):
        demo.SeedOptions(**{field: value})  # type: ignore[arg-type]


def test_zero_and_one_entries_per_customer_plant_only_what_fits(engine: Engine) -> None:
    """With 1 entry per customer only kinds that fit are planted, and all are still found and explained."""
    demo.seed(engine, demo.SeedOptions(customers=400, entries_per_customer=1, drift_rate=Decimal("0.5"), seed=2))
    with engine.connect() as conn:
        plants = {p.customer_id: p for p in demo.list_plants(conn)}
        explained = explain_drifts(conn, compare_all(conn, TOLERANCE))
    assert {p.kind for p in plants.values()} == set(demo.feasible_kinds(1))
    assert {cid: e.cause for cid, e in explained.items()} == {cid: p.kind for cid, p in plants.items()}


def test_numeric_binary_encoding_round_trips_at_the_limits(engine: Engine) -> None:
    """The binary COPY numeric encoding reads back exactly, from -max to +max of numeric(18,2)."""
    cents = np.array([0, 1, -1, 99, 100, -12_345, 10**12 + 7, 999_999_999_999_999_999,
                      -999_999_999_999_999_999], dtype=np.int64)
    batch = demo.Batch(first_customer=1, first_entry_id=1, balances=cents, updated_at=np.zeros(len(cents), np.int64),
                       entry_customer=np.zeros(0, np.int64), entry_amount=np.zeros(0, np.int64),
                       entry_kind=np.zeros(0, np.int8), entry_ref_number=np.zeros(0, np.int64),
                       entry_balance_after=np.zeros(0, np.int64), entry_created_at=np.zeros(0, np.int64))
    with engine.begin() as conn:
        demo._copy(conn, demo.CUSTOMER_COPY, demo.encode_customers(batch))
        back = [r[0] for r in conn.execute(text("select balance from customers order by id"))]
        stamp = conn.execute(text("select updated_at from customers where id = 1")).scalar_one()
    assert back == [Decimal(int(c)).scaleb(-2) for c in cents]
    assert stamp.isoformat() == "2000-01-01T00:00:00+00:00"


def test_cli_seed_and_planted(database_env: URL) -> None:
    """`demo seed` prints a summary (plain progress lines without a terminal), `demo planted --first` prints
    the first planted id, `--json` one object; a second seed without --reset exits 2."""
    from reconciler.cli import app

    runner = CliRunner()
    seeded = runner.invoke(app, ["demo", "seed", "--customers", "500", "--entries-per-customer", "3",
                                 "--drift-rate", "0.2", "--seed", "9"])
    assert seeded.exit_code == 0, seeded.output
    assert "seeded 500 customers" in seeded.stdout
    assert "seeded 500/500 customers (100%" in seeded.stderr
    first = runner.invoke(app, ["demo", "planted", "--first"])
    listed = runner.invoke(app, ["demo", "planted", "--json"])
    assert first.exit_code == listed.exit_code == 0
    import json

    payload = json.loads(listed.stdout)
    assert int(first.stdout.strip()) == payload["plants"][0]["customer_id"] == min(
        p["customer_id"] for p in payload["plants"])
    assert payload["count"] == len(payload["plants"]) > 0
    again = runner.invoke(app, ["demo", "seed", "--customers", "10"])
    assert again.exit_code == 2
    assert "--reset" in again.stderr
    bad = runner.invoke(app, ["demo", "seed", "--drift-rate", "lots"])
    assert bad.exit_code == 2
    assert "--drift-rate" in bad.stderr
