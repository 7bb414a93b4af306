"""A trigger disabled and enabled again between two runs leaves the catalog as it was; the event trigger of
migration 0012 remembers it, so the next incremental run runs full, finds the drift written meanwhile, and
only a full run that saw the toggle clears it."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, text

from reconciler.guard import guard_status
from reconciler.pipeline import RunSummary
from tests.factories import write_around_core
from tests.fix_runs import dry_run, found, guarded_ledger

D = Decimal
pytestmark = pytest.mark.usefixtures("quick_quality_and_report")
CUSTOMERS = range(1, 11)


def run(engine: Engine, mode: str, **options: Any) -> RunSummary:
    return dry_run(engine, mode, chunk_size=4, **options)


def gaps(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(text("select table_name, command_tag, role, statement from reconciler.feed_gaps")))


@pytest.fixture
def guarded(engine: Engine) -> Engine:
    """Customers 1..10 written by the core, the guard observing, a first full run setting the verified point."""
    guarded_ledger(engine, CUSTOMERS, D("50.00"), chunk_size=4)
    assert gaps(engine) == []
    return engine


def toggle_and_write(engine: Engine, customer_id: int) -> None:
    """Disable the guard's triggers on customers, write around the core, enable them again: the catalog looks
    untouched, and neither the capture nor the feed saw the write (no bypass row, no task)."""
    with engine.begin() as conn:
        conn.execute(text("alter table customers disable trigger user"))
    write_around_core(engine, "balance", customer_id, "3.00")
    with engine.begin() as conn:
        conn.execute(text("alter table customers enable trigger user"))


def test_a_toggled_trigger_makes_the_next_incremental_run_full_and_it_finds_the_hidden_drift(
        guarded: Engine) -> None:
    toggle_and_write(guarded, 7)
    pending = guard_status(guarded)
    assert pending.disabled == (), "re-enabled: the catalog alone shows nothing"
    assert any("2 ALTER TABLE(s) of the guarded tables" in note for note in pending.notes)
    assert not any("not watched" in note for note in pending.notes)
    with guarded.connect() as conn:
        assert conn.execute(text("select count(*) from reconciler.bypass_writes")).scalar_one() == 0
        assert conn.execute(text("select count(*) from reconciler.tasks")).scalar_one() == 0
    recorded = gaps(guarded)
    assert [(g.table_name, g.command_tag) for g in recorded] == [("public.customers", "ALTER TABLE")] * 2
    assert "disable trigger" in recorded[0].statement and recorded[0].role
    summary = run(guarded, "incremental")
    assert summary.mode == "full", "the feed has a hole: incremental would never compare customer 7"
    assert summary.mode_reason is not None and "altered since the last full sweep" in summary.mode_reason
    assert "public.customers" in summary.mode_reason
    assert found(guarded, summary.run_id) == {7}
    assert summary.verified_to is not None
    assert gaps(guarded) == [], "a full run that saw the toggles clears them"
    assert not any("ALTER TABLE(s)" in note for note in guard_status(guarded).notes)
    again = run(guarded, "incremental")
    assert again.mode == "incremental"


def test_only_a_full_run_over_everyone_clears_a_toggle(guarded: Engine) -> None:
    """A run restricted to some customers verifies nothing, so the toggle stays and the next run is full."""
    toggle_and_write(guarded, 3)
    restricted = run(guarded, "full", customer_ids=(1, 2))
    assert restricted.verified_to is None
    assert len(gaps(guarded)) == 2
    assert run(guarded, "incremental").mode == "full"


def test_alter_table_on_an_unguarded_table_is_not_recorded(engine: Engine) -> None:
    """Without the guard's feed triggers nothing is watched (and a DDL never fails because of the watch)."""
    with engine.begin() as conn:
        conn.execute(text("alter table customers disable trigger all"))
        conn.execute(text("alter table customers enable trigger all"))
    assert gaps(engine) == []
