"""The explain rules (pure): each planted story gets its cause and evidence; the order of rules and the
sign convention (drift = stored_balance - ledger_sum) hold."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler import demo
from reconciler.explain import CAUSES, CustomerFacts, explain, facts_from_entries

Entry = tuple[int, Decimal, str, str | None, Decimal | None]


def D(value: str) -> Decimal:
    return Decimal(value)


def honest(amounts: Sequence[str]) -> list[Entry]:
    """Entries with a correct balance_after chain, ids 10, 20, 30, ..."""
    entries: list[Entry] = []
    balance = Decimal("0.00")
    for offset, amount in enumerate(amounts):
        balance += D(amount)
        kind = "deposit" if D(amount) > 0 else "payment"
        entries.append((10 * (offset + 1), D(amount), kind, f"ref-{offset}", balance))
    return entries


def facts(stored: str | Decimal, entries: Sequence[Entry]) -> CustomerFacts:
    return facts_from_entries(7, Decimal(stored), entries)


HISTORY = ["500.00", "-120.00", "35.50", "-80.25", "200.00"]  # balance_after 500, 380, 415.50, 335.25, 535.25


def test_honest_history_has_no_gap_and_no_drift() -> None:
    """An honest customer: no gap, no end gap, drift 0 (the facts the rules build on)."""
    f = facts("535.25", honest(HISTORY))
    assert (f.drift, f.gap_count, f.end_gap, f.chain_complete) == (0, 0, 0, True)


def test_missing_entry_is_the_gap_in_the_chain() -> None:
    """An entry lost from the ledger (later balance_after include it): missing_entry between its neighbours."""
    entries = honest(HISTORY)
    del entries[1]  # the -120.00 payment never reached the ledger; the balance has it
    f = facts("535.25", entries)
    assert f.drift == D("-120.00")
    found = explain(f)
    assert found.cause == "missing_entry"
    assert found.evidence["entry_ids"] == [10, 30]
    assert found.evidence["missing_amount"] == "-120.00"
    assert "-120.00" in found.summary


def test_duplicated_entry_is_an_identical_copy_at_the_gap() -> None:
    """The same entry inserted twice: duplicated_entry naming the original and the copy; drift = -amount."""
    entries = honest(HISTORY)
    original = entries[2]
    entries.insert(3, (31, *original[1:]))
    f = facts("535.25", sorted(entries))
    assert f.drift == D("-35.50")
    found = explain(f)
    assert found.cause == "duplicated_entry"
    assert found.evidence["entry_ids"] == [30, 31]
    assert found.evidence["duplicate_entry_id"] == 31


def test_a_gap_of_the_same_amount_without_a_twin_is_a_missing_entry() -> None:
    """A gap equal to -amount of an entry that is NOT a copy of its predecessor is not a duplicate."""
    entries = honest(HISTORY)
    _eid, amount, kind, _ref, after = entries[2]
    entries.insert(3, (31, amount, kind, "another-reference", after))
    assert explain(facts("535.25", sorted(entries))).cause == "missing_entry"


def test_sign_flipped_entry_is_twice_the_amount() -> None:
    """The ledger recorded -x where the balance applied +x: drift = 2x, sign_flipped_entry on that entry."""
    entries = honest(HISTORY)
    eid, amount, kind, ref, after = entries[3]  # -80.25 applied; recorded as +80.25
    entries[3] = (eid, -amount, kind, ref, after)
    f = facts("535.25", entries)
    assert f.drift == D("-160.50")
    found = explain(f)
    assert found.cause == "sign_flipped_entry"
    assert found.evidence == {"entry_ids": [40], "recorded_amount": "80.25", "applied_amount": "-80.25"}


def test_unapplied_entries_leave_the_balance_at_an_earlier_balance_after() -> None:
    """The balance equals an earlier balance_after: the later entries were never applied (counted)."""
    found = explain(facts("415.50", honest(HISTORY)))
    assert found.cause == "unapplied_entry"
    assert found.evidence["entry_ids"] == [40, 50]
    assert found.evidence["balance_matches_entry_id"] == 30
    assert found.evidence["unapplied_count"] == 2
    assert found.evidence["unapplied_amount"] == "119.75"


def test_balance_written_around_the_ledger() -> None:
    """The chain is intact but the balance matches no balance_after: written around the ledger."""
    found = explain(facts("600.00", honest(HISTORY)))
    assert found.cause == "balance_written_around_ledger"
    assert found.evidence["entry_ids"] == [50]
    assert found.evidence["last_balance_after"] == "535.25"


def test_customer_without_entries_and_a_balance_was_written_around_the_ledger() -> None:
    """No entries but a balance: drift = the balance, written around the ledger, no entry ids."""
    f = facts("-12.00", [])
    assert (f.drift, f.ledger_sum, f.entry_count) == (D("-12.00"), 0, 0)
    found = explain(f)
    assert found.cause == "balance_written_around_ledger"
    assert found.evidence["entry_ids"] == []


def test_two_breaks_are_unknown() -> None:
    """Two gaps (or a gap plus an end gap) are more than one story: unknown, with the gaps as evidence."""
    entries = honest(HISTORY)
    del entries[3]
    del entries[1]
    f = facts("535.25", entries)
    assert f.gap_count == 2
    found = explain(f)
    assert found.cause == "unknown"
    assert found.evidence["entry_ids"] == [30, 50]
    one_gap = honest(HISTORY)
    del one_gap[1]
    assert explain(facts("600.00", one_gap)).cause == "unknown"


def test_a_drift_gone_by_the_time_it_is_explained_is_unknown() -> None:
    """Facts with no drift left (changed since the comparison) never invent a cause."""
    found = explain(facts("535.25", honest(HISTORY)))
    assert found.cause == "unknown"
    assert "gone" in found.summary


def _without_chain(entries: Sequence[Entry]) -> list[Entry]:
    return [(eid, amount, kind, ref, None) for eid, amount, kind, ref, _after in entries]


@pytest.mark.parametrize(("stored", "extra", "cause", "entry_ids"), [
    ("535.25", [(60, D("35.50"), "deposit", "ref-2", None)], "duplicated_entry", [30, 60]),
    ("695.75", [], "sign_flipped_entry", [40]),  # drift 160.50 = -2 * -80.25
    ("335.25", [], "unapplied_entry", [50]),  # drift -200.00 = -amount of entry 5
    ("735.25", [], "missing_entry", [50]),  # drift 200.00 = the amount of entry 5
    ("535.26", [], "unknown", []),
])
def test_without_balance_after_only_amounts_speak(stored: str, extra: list[Entry], cause: str,
                                                  entry_ids: list[int]) -> None:
    """An adopted ledger without balance_after: causes come from amounts that match the drift."""
    f = facts(stored, _without_chain(honest(HISTORY)) + extra)
    assert not f.chain_complete
    found = explain(f)
    assert found.cause == cause
    assert found.evidence["entry_ids"] == entry_ids


def test_a_reconciliation_anchor_restarts_the_chain() -> None:
    """An old break settled by a reconciliation (its anchor) is not counted again: a new drift after it
    gets its own cause, where without the anchor it would be unknown."""
    entries = honest(HISTORY)
    del entries[1]  # the old missing -120.00 ...
    settled = sum((e[1] for e in entries), Decimal("0.00"))  # ... settled: balance set to the ledger sum
    entries.append((60, D("10.00"), "deposit", "ref-after", settled + D("10.00")))  # an honest payment since
    stored = settled + D("10.00") + D("5.55")  # then 5.55 written around the ledger
    anchored = facts_from_entries(7, stored, entries, anchor=(50, settled))
    assert (anchored.entry_count, anchored.gap_count, anchored.opening_balance) == (1, 0, settled)
    assert anchored.drift == D("5.55")
    found = explain(anchored)
    assert found.cause == "balance_written_around_ledger"
    assert found.evidence["entry_ids"] == [60]
    assert explain(facts_from_entries(7, stored, entries)).cause == "unknown"


def test_anchor_without_later_entries_and_the_anchor_balance_as_a_match() -> None:
    """No entry since the anchor and a moved balance: written around; entries since the anchor while the
    balance still equals the anchor balance: unapplied."""
    entries = honest(HISTORY)
    moved = explain(facts_from_entries(7, D("600.00"), entries, anchor=(50, D("535.25"))))
    assert moved.cause == "balance_written_around_ledger"
    assert "since the last reconciliation" in moved.summary
    entries.append((60, D("-35.25"), "payment", "ref-late", D("500.00")))
    stale = explain(facts_from_entries(7, D("535.25"), entries, anchor=(50, D("535.25"))))
    assert stale.cause == "unapplied_entry"
    assert stale.evidence["entry_ids"] == [60]
    assert stale.evidence["balance_matches_entry_id"] is None


amount_cents = st.integers(min_value=-50_000, max_value=50_000).filter(lambda c: c != 0)


@settings(max_examples=200)
@given(cents=st.lists(amount_cents, max_size=12), delta=st.integers(min_value=-10_000, max_value=10_000))
def test_drift_is_the_end_gap_plus_the_gaps(cents: list[int], delta: int) -> None:
    """For a complete chain, drift == end gap + sum of gaps, whatever the history (the rules rely on it)."""
    entries = honest([str(Decimal(c).scaleb(-2)) for c in cents])
    if entries:  # break the chain at a random place by shifting one balance_after
        eid, amount, kind, ref, after = entries[len(entries) // 2]
        entries[len(entries) // 2] = (eid, amount, kind, ref, (after or 0) + Decimal(delta).scaleb(-2))
    stored = (entries[-1][4] if entries else Decimal("0.00")) or Decimal("0.00")
    f = facts(stored + Decimal(delta).scaleb(-2), entries)
    assert f.drift == f.end_gap + sum((g.gap or 0 for g in f.gaps), Decimal("0"))


@settings(max_examples=300)
@given(kind=st.sampled_from(demo.PLANT_KINDS), data=st.data())
def test_every_demo_plant_is_explained_with_its_kind(kind: str, data: st.DataObject) -> None:
    """Any plant demo seed makes, on any honest history, is explained with its kind and evidence entry."""
    m = data.draw(st.integers(min_value=2 if kind in (demo.MISSING, demo.UNAPPLIED) else 1, max_value=15))
    raw = data.draw(st.lists(st.integers(min_value=0, max_value=2**64 - 1), min_size=2 * m, max_size=2 * m))
    import numpy as np

    amounts, kinds = demo.honest_amounts(np.array(raw, dtype=np.uint64).reshape(1, m, 2))
    magnitude = data.draw(st.integers(min_value=5, max_value=90_000))
    rows, stored, drift, evidence = demo.plant_customer(
        kind, amounts[0].tolist(), kinds[0].tolist(), magnitude, data.draw(st.integers(0, 1 << 30)),
        data.draw(st.booleans()))
    entries = [(i + 1, Decimal(r.amount).scaleb(-2), "deposit" if r.kind == 0 else "payment",
                demo.reference(7, r.ref), Decimal(r.balance_after).scaleb(-2)) for i, r in enumerate(rows)]
    f = facts(Decimal(stored).scaleb(-2), entries)
    assert f.drift == Decimal(drift).scaleb(-2) != 0
    found = explain(f)
    assert found.cause == kind
    assert found.cause in CAUSES
    if evidence is not None:
        assert evidence + 1 in list(found.evidence["entry_ids"])  # type: ignore[call-overload]
