"""The database restarts under the product: pooled connections recover, nothing is lost or applied twice."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import Engine

from reconciler import migrate
from reconciler.balances import BalanceManager
from reconciler.db import make_engine, start_embedded, stop_embedded
from reconciler.errors import DatabaseUnavailableError
from reconciler.pipeline import RunOptions, run_reconciliation
from tests.factories import cached_balance, entry_count, ledger_sum, make_customer, set_cached_balance

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("quick_quality_and_report")]


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[tuple[Path, Engine]]:
    """A PostgreSQL server of this test's own (restarting the session's server would disturb other tests)."""
    home = tmp_path / "home"
    engine = make_engine(start_embedded(home))
    migrate.upgrade(engine)
    yield home, engine
    engine.dispose()
    stop_embedded(home)


def test_core_and_runs_survive_a_database_restart(own_server: tuple[Path, Engine]) -> None:
    """After a restart the same engine works again; a payment refused while the database was down is applied
    exactly once on retry, and a run afterwards finds and corrects drift planted before the restart."""
    home, engine = own_server
    core = BalanceManager(engine)
    for customer in (1, 2, 3):
        make_customer(engine, customer)
        core.update_balance(customer, "100.00", kind="deposit", idempotency_key=f"open-{customer}")
    set_cached_balance(engine, 2, "107.25")  # drift written around the ledger before the restart

    assert stop_embedded(home)
    with pytest.raises(DatabaseUnavailableError, match="same idempotency_key"):
        core.update_balance(1, "5.00", kind="payment", idempotency_key="pay-during-outage")
    start_embedded(home)

    applied = core.update_balance(1, "5.00", kind="payment", idempotency_key="pay-during-outage")
    assert not applied.replayed and applied.balance_after == Decimal("105.00")
    again = core.update_balance(1, "5.00", kind="payment", idempotency_key="pay-during-outage")
    assert again.replayed and again.entry_id == applied.entry_id
    assert entry_count(engine, 1) == 2

    summary = run_reconciliation(engine, RunOptions(max_drift_ratio=Decimal("1"), chunk_size=2))
    assert summary.status == "succeeded"
    assert (summary.drift_count, summary.corrected) == (1, 1)
    for customer in (1, 2, 3):
        assert cached_balance(engine, customer) == ledger_sum(engine, customer)
    assert cached_balance(engine, 2) == Decimal("100.00")
