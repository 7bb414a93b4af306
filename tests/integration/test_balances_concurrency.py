"""The balance core under real concurrency: many threads, hot customers, one shared PostgreSQL.

Each thread records the changes the core reports as applied; afterwards the database must agree with
them exactly (no lost update), every transfer must conserve money, no deadlock may escape, and no
real-time drift may be reported for customers only the core touched."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from decimal import Decimal
from functools import partial
from typing import Any

import pytest
from sqlalchemy import Engine, text

from reconciler.balances import BalanceChange, BalanceManager
from reconciler.errors import IdempotencyConflictError, InsufficientFundsError
from tests.factories import cached_balance, entry_count, ledger_sum, make_customer, set_cached_balance

D = Decimal
THREADS = 8


def run_together(workers: list[Callable[[], Any]]) -> list[Any]:
    """Start every worker at the same instant (a barrier) and return their results; re-raise any error."""
    barrier = threading.Barrier(len(workers))
    results: list[Any] = [None] * len(workers)
    errors: list[BaseException] = []

    def run(index: int, work: Callable[[], Any]) -> None:
        barrier.wait()
        try:
            results[index] = work()
        except BaseException as exc:  # surfaced below, with the thread's traceback
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, w)) for i, w in enumerate(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
        assert not thread.is_alive(), "a worker hung (lock wait or deadlock)"
    if errors:
        raise errors[0]
    return results


def assert_chain(engine: Engine, customer_id: int) -> None:
    with engine.connect() as conn:
        rows = conn.execute(text("select amount, balance_after from customer_ledger_entries "
                                 "where customer_id = :c order by id"), {"c": customer_id}).all()
    running = D("0.00")
    for amount, balance_after in rows:
        running += amount
        assert balance_after == running
    assert cached_balance(engine, customer_id) == running


def realtime_task_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("select count(*) from reconciler.tasks where source = 'realtime'")).scalar_one())


@pytest.mark.slow
def test_hot_customers_lose_no_update_and_transfers_conserve_money(engine: Engine) -> None:
    """8 threads on 4 hot customers: no lost update, total conserved, no deadlock, no false realtime drift."""
    core = BalanceManager(engine)
    hot = [make_customer(engine, i) for i in (1, 2, 3, 4)]
    for customer in hot:
        core.update_balance(customer, "500.00", kind="opening_balance")
    start = {c: cached_balance(engine, c) for c in hot}
    entries_before = entry_count(engine)

    def worker(seed: int) -> tuple[dict[int, Decimal], Decimal, int, int]:
        if seed % 2:  # half the threads work on a pinned connection, half through the pool per call
            with core.pinned() as mine:
                return operate(seed, mine)
        return operate(seed, core)

    def operate(seed: int, core: BalanceManager) -> tuple[dict[int, Decimal], Decimal, int, int]:
        rnd = random.Random(seed)
        deltas = dict.fromkeys(hot, D("0.00"))
        external = D("0.00")  # credits minus debits: what transfers must not change
        refused = 0
        entries = 0  # entries this thread's applied operations appended
        for _ in range(50):
            amount = D(rnd.randint(1, 20_000)).scaleb(-2)
            choice = rnd.random()
            try:
                if choice < 0.3:
                    change = core.update_balance(rnd.choice(hot), amount, kind="deposit")
                    deltas[change.customer_id] += change.amount
                    external += change.amount
                    entries += 1
                elif choice < 0.6:
                    change = core.update_balance(rnd.choice(hot), amount, "subtract", kind="withdrawal")
                    deltas[change.customer_id] += change.amount
                    external += change.amount
                    entries += 1
                else:
                    source, target = rnd.sample(hot, 2)
                    moved = core.transfer(source, target, amount)
                    assert moved.outgoing.amount + moved.incoming.amount == 0
                    deltas[source] -= amount
                    deltas[target] += amount
                    entries += 2
            except InsufficientFundsError:
                refused += 1
        return deltas, external, refused, entries

    results = run_together([partial(worker, seed) for seed in range(THREADS)])
    for customer in hot:
        expected = start[customer] + sum(r[0][customer] for r in results)
        assert cached_balance(engine, customer) == expected == ledger_sum(engine, customer)
        assert_chain(engine, customer)
    total = sum(cached_balance(engine, c) for c in hot)
    assert total == sum(start.values()) + sum(r[1] for r in results)
    # Exactly one entry per applied deposit or withdrawal and two per transfer: nothing lost, nothing doubled.
    applied_entries = sum(r[3] for r in results)
    assert entry_count(engine) - entries_before == applied_entries
    # Refused debits are a minority (about 10% here, measured over repeated runs): at most a quarter.
    assert sum(r[2] for r in results) <= THREADS * 50 // 4
    assert core.retries == 0
    assert realtime_task_count(engine) == 0


def test_two_threads_retrying_one_key_produce_one_entry(engine: Engine) -> None:
    """Two callers racing with the same idempotency key get the same entry; exactly one is not a replay."""
    make_customer(engine, 1)
    for round_number in range(8):
        key = f"pay-{round_number}"
        pay = partial(BalanceManager(engine).update_balance, 1, "10.00", kind="deposit", idempotency_key=key)
        first, second = run_together([pay, partial(BalanceManager(engine).update_balance, 1, "10.00",
                                                   kind="deposit", idempotency_key=key)])
        assert isinstance(first, BalanceChange) and isinstance(second, BalanceChange)
        assert first.entry_id == second.entry_id and first.balance_after == second.balance_after
        assert sorted([first.replayed, second.replayed]) == [False, True]
    assert entry_count(engine, 1) == 8 and cached_balance(engine, 1) == D("80.00")
    assert_chain(engine, 1)


def test_one_key_racing_on_two_customers_lands_once(engine: Engine) -> None:
    """The same key used at once for two different customers: one change lands, the other is a conflict."""
    make_customer(engine, 1)
    make_customer(engine, 2)

    def attempt(customer: int) -> object:
        try:
            return BalanceManager(engine).update_balance(customer, "5.00", kind="deposit", idempotency_key="shared")
        except IdempotencyConflictError as exc:
            return exc

    outcomes = run_together([lambda: attempt(1), lambda: attempt(2)])
    assert sorted(type(o).__name__ for o in outcomes) == ["BalanceChange", "IdempotencyConflictError"]
    assert entry_count(engine) == 1
    assert cached_balance(engine, 1) + cached_balance(engine, 2) == D("5.00")


def test_two_threads_retrying_one_transfer_key_move_money_once(engine: Engine) -> None:
    """A transfer retried concurrently with its key moves the money once; both callers get the same entries."""
    make_customer(engine, 1)
    make_customer(engine, 2)
    BalanceManager(engine).update_balance(1, "100.00", kind="deposit")
    first, second = run_together([
        lambda: BalanceManager(engine).transfer(1, 2, "30.00", idempotency_key="t"),
        lambda: BalanceManager(engine).transfer(1, 2, "30.00", idempotency_key="t"),
    ])
    assert first.outgoing.entry_id == second.outgoing.entry_id
    assert sorted([first.replayed, second.replayed]) == [False, True]
    assert (cached_balance(engine, 1), cached_balance(engine, 2)) == (D("70.00"), D("30.00"))


@pytest.mark.slow
def test_realtime_mismatch_under_load_opens_exactly_one_task(engine: Engine) -> None:
    """After a hand-written balance, 8 threads paying at once all succeed and exactly one realtime task opens."""
    core = BalanceManager(engine)
    make_customer(engine, 1)
    core.update_balance(1, "100.00", kind="deposit")
    set_cached_balance(engine, 1, "150.00")

    def pay() -> list[BalanceChange]:
        return [core.update_balance(1, "1.00", kind="deposit") for _ in range(10)]

    changes = [c for batch in run_together([pay] * THREADS) for c in batch]
    assert len(changes) == THREADS * 10
    assert [c.chain_drift for c in changes if c.chain_drift is not None] == [D("50.00")]
    assert cached_balance(engine, 1) == D("150.00") + THREADS * 10
    with engine.connect() as conn:
        tasks = conn.execute(text("select source, drift, status from reconciler.tasks")).all()
    assert [tuple(t) for t in tasks] == [("realtime", D("50.00"), "open")]
