"""explain_drifts on a real PostgreSQL: each story written with the factories gets its cause and entry
ids; the SQL facts agree with the pure ones; one query per batch of drifts."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, event, select, text

from reconciler.compare import Drift, compare_all
from reconciler.explain import explain, explain_drifts, facts_from_entries
from reconciler.schema import ledger_entries
from tests.factories import make_customer, post_entry, set_cached_balance

TOLERANCE = Decimal("0.01")


def _history(engine: Engine, customer_id: int, balance: str, entries: list[tuple[str, str | None]],
             *, reference: str = "inv") -> list[int]:
    """A customer with entries (amount, balance_after); returns the entry ids."""
    make_customer(engine, customer_id, balance)
    return [post_entry(engine, customer_id, amount, balance_after=after, kind="payment")
            for amount, after in entries]


def _explained(engine: Engine) -> dict[int, Any]:
    with engine.connect() as conn:
        return explain_drifts(conn, compare_all(conn, TOLERANCE))


def test_each_story_is_explained_with_its_cause_and_entries(engine: Engine) -> None:
    """Missing, duplicated, sign-flipped, unapplied, written-around and no-entry stories get their causes."""
    # missing: 30.00 applied to the balance (and to later balance_after) but never recorded
    missing = _history(engine, 1, "130.00", [("100.00", "100.00"), ("-20.00", "110.00"), ("20.00", "130.00")])
    # duplicated: the -20.00 row inserted twice, identical
    make_customer(engine, 2, "90.00")
    dup = [post_entry(engine, 2, "100.00", balance_after="100.00", kind="deposit"),
           post_entry(engine, 2, "-10.00", balance_after="90.00", kind="payment"),
           post_entry(engine, 2, "-10.00", balance_after="90.00", kind="payment")]
    # sign flip: the balance applied -45.50, the ledger recorded +45.50
    flip = _history(engine, 3, "54.50", [("100.00", "100.00"), ("45.50", "54.50")])
    # unapplied: the last entry never reached the balance
    unapplied = _history(engine, 4, "100.00", [("100.00", "100.00"), ("-250.00", "-150.00")])
    # written around the ledger
    around = _history(engine, 5, "77.77", [("100.00", "100.00")])
    make_customer(engine, 6, "-3.00")  # no entries at all
    found = _explained(engine)
    assert {cid: e.cause for cid, e in found.items()} == {
        1: "missing_entry", 2: "duplicated_entry", 3: "sign_flipped_entry", 4: "unapplied_entry",
        5: "balance_written_around_ledger", 6: "balance_written_around_ledger"}
    assert found[1].evidence["entry_ids"] == missing[0:2]
    assert found[1].evidence["missing_amount"] == "30.00"
    assert found[2].evidence["entry_ids"] == dup[1:3]
    assert found[3].evidence["entry_ids"] == [flip[1]]
    assert found[4].evidence["entry_ids"] == [unapplied[1]]
    assert found[4].evidence["unapplied_amount"] == "-250.00"
    assert found[5].evidence["entry_ids"] == around
    assert found[6].evidence["entry_ids"] == []


def test_adopted_entries_without_balance_after_fall_back_to_amounts(engine: Engine) -> None:
    """Without balance_after, amounts decide: a twin of -drift is a duplicate, -2 * amount a sign flip,
    the drift's own amount a missing entry, nothing matching is unknown."""
    make_customer(engine, 1, "130.00")  # ledger 100.00: drift 30.00, the -30.00 is there twice
    dup = [post_entry(engine, 1, amount) for amount in ("100.00", "-30.00", "60.00", "-30.00")]
    make_customer(engine, 2, "55.00")  # ledger 145.00: drift -90.00 = -2 * 45.00
    flipped = [post_entry(engine, 2, amount) for amount in ("100.00", "45.00")]
    make_customer(engine, 3, "10.00")  # ledger 55.00: drift -45.00 = the amount of the -45.00 entry
    missing = [post_entry(engine, 3, amount) for amount in ("100.00", "-45.00")]
    make_customer(engine, 4, "1.23")
    post_entry(engine, 4, "100.00")
    found = _explained(engine)
    assert (found[1].cause, found[1].evidence["entry_ids"]) == ("duplicated_entry", [dup[1], dup[3]])
    assert (found[2].cause, found[2].evidence["entry_ids"]) == ("sign_flipped_entry", [flipped[1]])
    assert (found[3].cause, found[3].evidence["entry_ids"]) == ("missing_entry", [missing[1]])
    assert found[4].cause == "unknown"


def test_sql_facts_give_the_same_explanations_as_the_pure_facts(engine: Engine) -> None:
    """For every drifting customer, explaining the SQL facts == explaining all its entries in Python."""
    test_each_story_is_explained_with_its_cause_and_entries(engine)
    _history(engine, 10, "1.00", [("5.00", "5.00"), ("-1.00", "4.00"), ("-2.00", "1.00"), ("3.00", "9.00")])
    _history(engine, 11, "9.00", [("5.00", None), ("4.00", "9.00"), ("4.00", "9.00")])
    assert _sql_matches_pure(engine) == 8


def test_explain_is_one_query_per_batch(engine: Engine) -> None:
    """All the drifts of a batch are explained with ONE statement (plus one lookup of the guard's bypass
    writes for the batch); batches split larger lists."""
    for cid in range(1, 8):
        _history(engine, cid, "10.00", [("5.00", "5.00")])
    with engine.connect() as conn:
        drifts = compare_all(conn, TOLERANCE)
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(str(args[2]))

    event.listen(engine, "before_cursor_execute", count)
    try:
        with engine.connect() as conn:
            whole = explain_drifts(conn, drifts)
            assert len(statements) == 2 and "bypass_writes" in statements[1]
            batched = explain_drifts(conn, drifts, batch=3)
            assert len(statements) == 2 * (1 + 3)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert whole == batched
    assert {e.cause for e in whole.values()} == {"balance_written_around_ledger"}
    with engine.connect() as conn:
        assert explain_drifts(conn, []) == {}


def test_a_customer_whose_drift_vanished_is_unknown_not_invented(engine: Engine) -> None:
    """A Drift that no longer holds (fixed since the comparison) is explained as unknown."""
    _history(engine, 1, "10.00", [("10.00", "10.00")])
    with engine.connect() as conn:
        stale = Drift(1, Decimal("10.00"), Decimal("10.00"), Decimal("0.00"))
        assert explain_drifts(conn, [stale])[1].cause == "unknown"
        assert conn.execute(text("select count(*) from customer_ledger_entries")).scalar_one() == 1


def test_a_reconciled_break_does_not_hide_the_next_drift(engine: Engine) -> None:
    """After the core reconciles a drift (policy ledger or balance) and later payments go through it, a new
    drift written around the ledger is explained as such: the chain restarts at the reconciliation."""
    from reconciler.balances import BalanceManager

    manager = BalanceManager(engine)
    for customer_id, policy in ((1, "ledger"), (2, "balance")):
        _history(engine, customer_id, "130.00",
                 [("100.00", "100.00"), ("-20.00", "110.00"), ("20.00", "130.00")])  # a missing 30.00
        manager.reconcile_balance(customer_id, policy)
        manager.update_balance(customer_id, "7.00", kind="deposit")
        with engine.connect() as conn:
            assert customer_id not in {d.customer_id for d in compare_all(conn, TOLERANCE)}
        set_cached_balance(engine, customer_id, manager.get_balance(customer_id) + Decimal("3.33"))
    found = _explained(engine)
    assert {cid: e.cause for cid, e in found.items()} == {1: "balance_written_around_ledger",
                                                           2: "balance_written_around_ledger"}
    assert all(e.evidence["stored_balance"] != e.evidence["last_balance_after"] for e in found.values())
    assert _sql_matches_pure(engine) == 2


def _sql_matches_pure(engine: Engine) -> int:
    """Assert that explaining the SQL facts == explaining all entries (and the anchor) in Python; returns
    how many drifting customers were compared."""
    from reconciler.schema import balance_reconciliations

    with engine.connect() as conn:
        drifts = compare_all(conn, TOLERANCE)
        by_sql = explain_drifts(conn, drifts)
        for d in drifts:
            rows = conn.execute(select(ledger_entries.c.id, ledger_entries.c.amount, ledger_entries.c.kind,
                                       ledger_entries.c.reference, ledger_entries.c.balance_after)
                                .where(ledger_entries.c.customer_id == d.customer_id)).all()
            anchor = conn.execute(select(balance_reconciliations.c.chain_entry_id,
                                         balance_reconciliations.c.balance_after)
                                  .where(balance_reconciliations.c.customer_id == d.customer_id)
                                  .order_by(balance_reconciliations.c.id.desc()).limit(1)).first()
            pure = explain(facts_from_entries(d.customer_id, d.stored_balance, [tuple(r) for r in rows],
                                              None if anchor is None else (anchor[0], anchor[1])))
            assert by_sql[d.customer_id] == pure, d
    return len(drifts)
