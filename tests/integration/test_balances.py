"""The balance core on a real PostgreSQL: exact changes, idempotency, transfers, validation, reconciliation,
real-time drift detection, bounded retries and the TTL cache."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import QueuePool

from reconciler.balances import (
    ADJUSTMENT_KIND,
    BalanceManager,
    ChainLink,
    chain_drift,
    expected_balance_before,
    plan_reconciliation,
    shortfall,
    signed_amount,
    transfer_entry_keys,
)
from reconciler.errors import (
    CustomerNotFoundError,
    FloatAmountError,
    IdempotencyConflictError,
    InsufficientFundsError,
    InvalidAmountError,
    InvalidOperationError,
    NonPositiveAmountError,
    ReconcilerError,
    TransientDatabaseError,
    UnknownEntryKindError,
)
from reconciler.money import MAX_AMOUNT
from tests.factories import cached_balance, entry_count, ledger_sum, make_customer, post_entry, set_cached_balance

D = Decimal


# -- helpers ---------------------------------------------------------------------------------------

def state(engine: Engine) -> tuple[object, ...]:
    """Everything a write could change: balances, entries, tasks, reconciliation log."""
    with engine.connect() as conn:
        return (
            tuple(conn.execute(text("select id, balance, updated_at from customers order by id")).all()),
            conn.execute(text("select count(*), max(id) from customer_ledger_entries")).one(),
            conn.execute(text("select count(*) from reconciler.tasks")).scalar_one(),
            conn.execute(text("select count(*) from reconciler.balance_reconciliations")).scalar_one(),
        )


def chain(engine: Engine, customer_id: int) -> list[tuple[Decimal, Decimal | None]]:
    with engine.connect() as conn:
        rows = conn.execute(text("select amount, balance_after from customer_ledger_entries "
                                 "where customer_id = :c order by id"), {"c": customer_id}).all()
    return [(r.amount, r.balance_after) for r in rows]


def assert_chain_is_running_sum(engine: Engine, customer_id: int) -> None:
    running = D("0.00")
    for amount, balance_after in chain(engine, customer_id):
        running += amount
        assert balance_after == running
    assert cached_balance(engine, customer_id) == running == ledger_sum(engine, customer_id)


def realtime_tasks(engine: Engine, customer_id: int | None = None) -> list[Any]:
    query = "select * from reconciler.tasks where source = 'realtime'"
    params: dict[str, object] = {}
    if customer_id is not None:
        query += " and customer_id = :c"
        params["c"] = customer_id
    with engine.connect() as conn:
        return list(conn.execute(text(query + " order by id"), params).all())


@pytest.fixture
def core(engine: Engine) -> BalanceManager:
    return BalanceManager(engine)


# -- pure rules --------------------------------------------------------------------------------------

def test_signed_amount_and_operations() -> None:
    """add is positive, subtract negative; unknown operations and non-positive amounts are named errors."""
    assert signed_amount("10.50", "add") == D("10.50")
    assert signed_amount(3, "subtract") == D("-3.00")
    with pytest.raises(InvalidOperationError, match="operation must be one of add, subtract"):
        signed_amount("1", "withdraw")
    with pytest.raises(NonPositiveAmountError):
        signed_amount("-1", "subtract")


def test_expected_balance_before_follows_anchor_then_entry() -> None:
    """No entry expects 0; an anchor on the latest entry wins; legacy NULL balance_after checks nothing."""
    assert expected_balance_before(ChainLink(None, None)) == D("0")
    assert expected_balance_before(ChainLink(7, D("5.00"))) == D("5.00")
    assert expected_balance_before(ChainLink(7, None)) is None
    assert expected_balance_before(ChainLink(7, D("5.00"), 7, D("4.00"))) == D("4.00")
    assert expected_balance_before(ChainLink(8, D("5.00"), 7, D("4.00"))) == D("5.00")
    assert expected_balance_before(ChainLink(None, None, None, D("2.00"))) == D("2.00")
    assert chain_drift(D("6.00"), ChainLink(7, D("5.00"))) == D("1.00")
    assert chain_drift(D("5.00"), ChainLink(7, D("5.00"))) is None


def test_shortfall_refuses_only_debits_below_zero() -> None:
    """A debit below zero has a shortfall unless allowed; credits are never refused, even when negative."""
    assert shortfall(D("5.00"), D("-7.00"), False) == D("2.00")
    assert shortfall(D("5.00"), D("-5.00"), False) is None
    assert shortfall(D("5.00"), D("-7.00"), True) is None
    assert shortfall(D("-50.00"), D("10.00"), False) is None


def test_plan_reconciliation_by_policy() -> None:
    """ledger sets the balance to the sum; balance posts the drift; within tolerance nothing changes."""
    assert plan_reconciliation(D("10.00"), D("7.00"), "ledger", D("0")).balance_after == D("7.00")
    plan = plan_reconciliation(D("10.00"), D("7.00"), "balance", D("0"))
    assert (plan.balance_after, plan.adjustment, plan.changed) == (D("10.00"), D("3.00"), True)
    assert not plan_reconciliation(D("10.00"), D("9.99"), "ledger", D("0.01")).changed
    with pytest.raises(InvalidAmountError, match="ledger sum"):
        plan_reconciliation(D("1.00"), MAX_AMOUNT + 1, "ledger", D("0"))
    with pytest.raises(InvalidAmountError, match="drift"):
        plan_reconciliation(MAX_AMOUNT, -MAX_AMOUNT, "balance", D("0"))
    assert transfer_entry_keys("t1") == ("t1:out", "t1:in")


# -- update_balance ------------------------------------------------------------------------------------

def test_add_and_subtract_append_entries_with_balance_after(engine: Engine, core: BalanceManager) -> None:
    """Each change updates the balance and appends one entry whose balance_after is the new balance."""
    make_customer(engine, 1)
    first = core.update_balance(1, "100.00", kind="deposit", reference="r1")
    second = core.update_balance(1, D("30.25"), "subtract", kind="payment")
    assert (first.balance_before, first.balance_after, first.amount) == (D("0.00"), D("100.00"), D("100.00"))
    assert (second.balance_before, second.balance_after, second.amount) == (D("100.00"), D("69.75"), D("-30.25"))
    assert second.entry_id > first.entry_id and not second.replayed and second.chain_drift is None
    assert chain(engine, 1) == [(D("100.00"), D("100.00")), (D("-30.25"), D("69.75"))]
    assert core.get_balance(1) == D("69.75")
    assert_chain_is_running_sum(engine, 1)
    assert realtime_tasks(engine) == []


def test_idempotent_retry_returns_first_result_and_writes_nothing(engine: Engine, core: BalanceManager) -> None:
    """The same key again replays the first change (replayed=True) without a second entry."""
    make_customer(engine, 1)
    first = core.update_balance(1, "10.00", kind="deposit", idempotency_key="k-1")
    core.update_balance(1, "5.00", kind="deposit")
    before = state(engine)
    again = core.update_balance(1, "10.00", kind="deposit", idempotency_key="k-1")
    assert again.replayed and not first.replayed
    assert (again.entry_id, again.balance_before, again.balance_after) == (first.entry_id, D("0.00"), D("10.00"))
    assert state(engine) == before
    assert cached_balance(engine, 1) == D("15.00")


@pytest.mark.parametrize(("customer", "amount", "operation", "kind"), [
    (2, "10.00", "add", "deposit"),
    (1, "10.01", "add", "deposit"),
    (1, "10.00", "subtract", "deposit"),
    (1, "10.00", "add", "refund"),
])
def test_same_key_for_another_operation_is_a_conflict(engine: Engine, core: BalanceManager, customer: int,
                                                      amount: str, operation: str, kind: str) -> None:
    """Reusing a key for a different customer, amount, operation or kind raises and writes nothing."""
    make_customer(engine, 1, "50.00")
    make_customer(engine, 2, "50.00")
    post_entry(engine, 1, "50.00", balance_after="50.00")
    post_entry(engine, 2, "50.00", balance_after="50.00")
    core.update_balance(1, "10.00", kind="deposit", idempotency_key="k-1")
    before = state(engine)
    with pytest.raises(IdempotencyConflictError, match=r"'k-1' was first used for customer 1, amount 10\.00"):
        core.update_balance(customer, amount, operation, kind=kind, idempotency_key="k-1")
    assert state(engine) == before


def test_debit_below_zero_is_refused_with_the_numbers(engine: Engine, core: BalanceManager) -> None:
    """InsufficientFundsError names balance, amount and shortfall; nothing is written."""
    make_customer(engine, 1)
    core.update_balance(1, "20.00", kind="deposit")
    before = state(engine)
    with pytest.raises(InsufficientFundsError, match=r"balance 20.00 is too low to subtract 25.50 \(short by 5.50\)"):
        core.update_balance(1, "25.50", "subtract", kind="payment")
    assert state(engine) == before


def test_negative_balances_allowed_by_constructor_or_per_call(engine: Engine, core: BalanceManager) -> None:
    """allow_negative (manager default or per call) lets a debit go below zero; a call can also refuse it."""
    make_customer(engine, 1)
    change = core.update_balance(1, "5.00", "subtract", kind="fee", allow_negative=True)
    assert change.balance_after == D("-5.00")
    lenient = BalanceManager(engine, allow_negative=True)
    assert lenient.update_balance(1, "1.00", "subtract", kind="fee").balance_after == D("-6.00")
    with pytest.raises(InsufficientFundsError):
        lenient.update_balance(1, "1.00", "subtract", kind="fee", allow_negative=False)
    # A credit is never refused, even while the balance stays negative.
    assert core.update_balance(1, "2.00", kind="deposit").balance_after == D("-4.00")
    assert_chain_is_running_sum(engine, 1)


BAD_UPDATES: list[tuple[str, dict[str, Any], type[ReconcilerError], str]] = [
    ("float", {"amount": 10.5}, FloatAmountError, "float"),
    ("three places", {"amount": "1.005"}, InvalidAmountError, "more than 2 decimal places"),
    ("zero", {"amount": "0"}, NonPositiveAmountError, "greater than 0"),
    ("negative", {"amount": "-5.00"}, NonPositiveAmountError, "greater than 0"),
    ("beyond numeric", {"amount": "10000000000000000.00"}, InvalidAmountError, r"numeric\(18,2\)"),
    ("unknown customer", {"customer_id": 999}, CustomerNotFoundError, "customer 999 does not exist"),
    ("unknown customer debit", {"customer_id": 999, "operation": "subtract"}, CustomerNotFoundError, "999"),
    ("unknown operation", {"operation": "multiply"}, InvalidOperationError, "operation must be one of"),
    ("empty kind", {"kind": "  "}, UnknownEntryKindError, "entry kind '  ' has surrounding whitespace"),
    ("unknown kind", {"kind": "bogus"}, UnknownEntryKindError, r"'bogus' is not a known kind; allowed: .*deposit"),
    ("kind with whitespace", {"kind": "payment "}, UnknownEntryKindError, "surrounding whitespace"),
    ("kind too long", {"kind": "x" * 100_000}, UnknownEntryKindError, "100000 characters long"),
    ("kind not text", {"kind": 7}, UnknownEntryKindError, "must be text"),
    ("customer id text", {"customer_id": "1"}, InvalidOperationError, "customer_id must be an int"),
    ("empty key", {"idempotency_key": ""}, InvalidOperationError, "idempotency_key"),
    ("result beyond numeric", {"amount": "2.00", "customer_id": 2}, InvalidAmountError,
     r"would be 10000000000000000.99, beyond numeric\(18,2\)"),
]


@pytest.mark.parametrize(("case", "overrides", "error", "message"), BAD_UPDATES, ids=[c[0] for c in BAD_UPDATES])
def test_bad_update_raises_named_error_and_writes_nothing(engine: Engine, core: BalanceManager, case: str,
                                                          overrides: dict[str, Any], error: type[Exception],
                                                          message: str) -> None:
    """Every bad input raises its named ReconcilerError and leaves balances, entries and tasks untouched."""
    make_customer(engine, 1, "10.00")
    post_entry(engine, 1, "10.00", balance_after="10.00")
    make_customer(engine, 2, MAX_AMOUNT - 1)
    post_entry(engine, 2, MAX_AMOUNT - 1, balance_after=MAX_AMOUNT - 1)
    call: dict[str, Any] = {"customer_id": 1, "amount": "1.00", "operation": "add", "kind": "deposit"}
    call.update(overrides)
    before = state(engine)
    with pytest.raises(error, match=message):
        core.update_balance(call.pop("customer_id"), call.pop("amount"), call.pop("operation"), **call)
    assert state(engine) == before


# -- transfers -------------------------------------------------------------------------------------------

def test_transfer_moves_money_with_two_entries(engine: Engine, core: BalanceManager) -> None:
    """A transfer debits one customer and credits the other, each entry carrying its balance_after."""
    make_customer(engine, 1)
    make_customer(engine, 2)
    core.update_balance(2, "100.00", kind="deposit")
    moved = core.transfer(2, 1, "40.00", reference="invoice 7", idempotency_key="t-1")
    assert (moved.outgoing.customer_id, moved.outgoing.amount, moved.outgoing.balance_after) == (2, D("-40.00"),
                                                                                               D("60.00"))
    assert (moved.incoming.customer_id, moved.incoming.amount, moved.incoming.balance_after) == (1, D("40.00"),
                                                                                               D("40.00"))
    assert (moved.outgoing.kind, moved.incoming.kind) == ("transfer_out", "transfer_in")
    assert (moved.outgoing.idempotency_key, moved.incoming.idempotency_key) == ("t-1:out", "t-1:in")
    assert moved.outgoing.entry_id < moved.incoming.entry_id
    for customer_id in (1, 2):
        assert_chain_is_running_sum(engine, customer_id)
    before = state(engine)
    again = core.transfer(2, 1, "40.00", idempotency_key="t-1", reference="invoice 7")
    assert again.replayed and again.outgoing.entry_id == moved.outgoing.entry_id
    assert (again.outgoing.balance_before, again.incoming.balance_before) == (D("100.00"), D("0.00"))
    assert state(engine) == before


def test_transfer_key_reused_differently_is_a_conflict(engine: Engine, core: BalanceManager) -> None:
    """A transfer key reused with another amount or direction raises and writes nothing."""
    make_customer(engine, 1, "0.00")
    make_customer(engine, 2, "0.00")
    core.update_balance(1, "50.00", kind="deposit")
    core.update_balance(2, "50.00", kind="deposit")
    core.transfer(1, 2, "10.00", idempotency_key="t-1")
    before = state(engine)
    for args in ((1, 2, "11.00"), (2, 1, "10.00")):
        with pytest.raises(IdempotencyConflictError, match="'t-1' was first used"):
            core.transfer(*args, idempotency_key="t-1")
    assert state(engine) == before


BAD_TRANSFERS: list[tuple[str, tuple[Any, ...], dict[str, Any], type[ReconcilerError], str]] = [
    ("same customer", (1, 1, "1.00"), {}, InvalidOperationError, "two different customers"),
    ("unknown source", (9, 1, "1.00"), {}, CustomerNotFoundError, "customer 9"),
    ("unknown target", (1, 9, "1.00"), {}, CustomerNotFoundError, "customer 9"),
    ("float", (1, 2, 1.0), {}, FloatAmountError, "float"),
    ("zero", (1, 2, "0.00"), {}, NonPositiveAmountError, "greater than 0"),
    ("insufficient", (1, 2, "10.01"), {}, InsufficientFundsError, "short by 0.01"),
    ("empty kind", (1, 2, "1.00"), {"kind": ""}, UnknownEntryKindError, "'_out' is not a known kind"),
    ("unknown kind", (1, 2, "1.00"), {"kind": "bogus"}, UnknownEntryKindError, "entry_kinds.json"),
    ("result beyond numeric", (1, 3, "2.00"), {}, InvalidAmountError, r"numeric\(18,2\)"),
]


@pytest.mark.parametrize(("case", "args", "kwargs", "error", "message"), BAD_TRANSFERS,
                         ids=[c[0] for c in BAD_TRANSFERS])
def test_bad_transfer_raises_named_error_and_writes_nothing(engine: Engine, core: BalanceManager, case: str,
                                                            args: tuple[Any, ...], kwargs: dict[str, Any],
                                                            error: type[Exception], message: str) -> None:
    """Every bad transfer raises its named error and changes neither customer nor the ledger."""
    make_customer(engine, 1, "10.00")
    post_entry(engine, 1, "10.00", balance_after="10.00")
    make_customer(engine, 2)
    make_customer(engine, 3, MAX_AMOUNT - 1)
    post_entry(engine, 3, MAX_AMOUNT - 1, balance_after=MAX_AMOUNT - 1)
    before = state(engine)
    with pytest.raises(error, match=message):
        core.transfer(*args, **kwargs)
    assert state(engine) == before


# -- validate_balance -----------------------------------------------------------------------------------

def test_validate_balance_reports_drift_with_strict_tolerance(engine: Engine, core: BalanceManager) -> None:
    """ok means abs(drift) <= 0.01: a drift of 0.01 is ok, 0.02 is not; unknown customers raise."""
    make_customer(engine, 1, "10.01")
    post_entry(engine, 1, "10.00")
    check = core.validate_balance(1)
    assert (check.stored_balance, check.ledger_sum, check.drift, check.ok, check.entry_count) == (
        D("10.01"), D("10.00"), D("0.01"), True, 1)
    set_cached_balance(engine, 1, "9.98")
    check = core.validate_balance(1)
    assert (check.drift, check.ok) == (D("-0.02"), False)
    make_customer(engine, 2)
    assert core.validate_balance(2).ledger_sum == D("0")
    with pytest.raises(CustomerNotFoundError):
        core.validate_balance(3)


# -- reconcile_balance ------------------------------------------------------------------------------------

def test_reconcile_ledger_policy_sets_balance_to_sum_and_is_audited(engine: Engine, core: BalanceManager) -> None:
    """Policy ledger sets the balance to the ledger sum (no entry), returns and logs old and new values."""
    make_customer(engine, 1)
    core.update_balance(1, "50.00", kind="deposit")
    set_cached_balance(engine, 1, "62.50")
    entries = entry_count(engine, 1)
    rec = core.reconcile_balance(1, "ledger", idempotency_key="task-1", reference="task 1",
                                 audit={"run_id": 7, "approved_by": "ana", "drift": D("12.50")})
    assert (rec.stored_before, rec.ledger_sum, rec.drift_before, rec.balance_after, rec.entry_id, rec.changed) == (
        D("62.50"), D("50.00"), D("12.50"), D("50.00"), None, True)
    assert cached_balance(engine, 1) == D("50.00") and entry_count(engine, 1) == entries
    with engine.connect() as conn:
        logged = conn.execute(text("select * from reconciler.balance_reconciliations")).one()
    assert (logged.stored_before, logged.balance_after, logged.policy, logged.reference) == (
        D("62.50"), D("50.00"), "ledger", "task 1")
    assert logged.audit == {"run_id": 7, "approved_by": "ana", "drift": "12.50"}
    before = state(engine)
    again = core.reconcile_balance(1, "ledger", idempotency_key="task-1")
    assert again.replayed and (again.stored_before, again.balance_after, again.changed) == (
        D("62.50"), D("50.00"), True)
    assert state(engine) == before
    with pytest.raises(IdempotencyConflictError, match="'task-1' was first used for reconciling customer 1"):
        core.reconcile_balance(1, "balance", idempotency_key="task-1")
    assert state(engine) == before


def test_reconcile_balance_policy_posts_adjusting_entry(engine: Engine, core: BalanceManager) -> None:
    """Policy balance appends a reconciliation_adjustment of amount = drift so the sum becomes the balance."""
    make_customer(engine, 1)
    core.update_balance(1, "50.00", kind="deposit")
    set_cached_balance(engine, 1, "45.00")
    rec = core.reconcile_balance(1, "balance")
    assert (rec.drift_before, rec.balance_after, rec.changed) == (D("-5.00"), D("45.00"), True)
    assert rec.entry_id is not None
    with engine.connect() as conn:
        entry = conn.execute(text("select amount, kind, balance_after from customer_ledger_entries where id = :i"),
                             {"i": rec.entry_id}).one()
    assert tuple(entry) == (D("-5.00"), ADJUSTMENT_KIND, D("45.00"))
    assert ledger_sum(engine, 1) == cached_balance(engine, 1) == D("45.00")
    assert core.update_balance(1, "1.00", kind="deposit").chain_drift is None


def test_reconcile_within_tolerance_changes_nothing(engine: Engine, core: BalanceManager) -> None:
    """A drift within tolerance under the lock is left alone (changed=False, no entry, same balance)."""
    make_customer(engine, 1, "10.01")
    post_entry(engine, 1, "10.00", balance_after="10.00")
    rec = core.reconcile_balance(1, "balance", tolerance=D("0.01"))
    assert (rec.changed, rec.entry_id, rec.balance_after) == (False, None, D("10.01"))
    assert entry_count(engine, 1) == 1 and cached_balance(engine, 1) == D("10.01")


@pytest.mark.parametrize(("call", "error"), [
    ({"policy": "magic"}, InvalidOperationError),
    ({"customer_id": 404}, CustomerNotFoundError),
    ({"tolerance": D("-1")}, InvalidAmountError),
    ({"tolerance": 0.01}, FloatAmountError),
])
def test_bad_reconcile_raises_named_error_and_writes_nothing(engine: Engine, core: BalanceManager,
                                                             call: dict[str, Any], error: type[Exception]) -> None:
    """Unknown policy, unknown customer or a bad tolerance raise their named errors and write nothing."""
    make_customer(engine, 1, "3.00")
    before = state(engine)
    with pytest.raises(error):
        core.reconcile_balance(call.pop("customer_id", 1), **call)
    assert state(engine) == before


# -- real-time validation -------------------------------------------------------------------------------

def test_balance_written_around_ledger_opens_one_realtime_task(engine: Engine, core: BalanceManager) -> None:
    """A payment after a balance written around the ledger succeeds and opens exactly one realtime task."""
    make_customer(engine, 1)
    first = core.update_balance(1, "100.00", kind="deposit")
    set_cached_balance(engine, 1, "130.00")  # someone wrote the balance by hand
    paid = core.update_balance(1, "10.00", "subtract", kind="payment")
    assert (paid.balance_before, paid.balance_after, paid.chain_drift) == (D("130.00"), D("120.00"), D("30.00"))
    core.update_balance(1, "1.00", kind="deposit")
    set_cached_balance(engine, 1, "0.00")
    core.update_balance(1, "1.00", kind="deposit")  # a second break while the first task is unresolved
    (task,) = realtime_tasks(engine, 1)
    assert (task.status, task.stored_balance, task.ledger_sum, task.drift, task.cause) == (
        "open", D("130.00"), D("100.00"), D("30.00"), "chain_mismatch")
    assert task.evidence["previous_entry_id"] == first.entry_id
    assert task.evidence["detected_by_entry_id"] == paid.entry_id


def test_the_realtime_task_opens_with_its_event_like_every_other_task(engine: Engine, core: BalanceManager) -> None:
    """The realtime task carries its opening event in resolution.events (who, open, drift values), written by
    the task lifecycle in the payment's own transaction."""
    make_customer(engine, 1)
    core.update_balance(1, "100.00", kind="deposit")
    set_cached_balance(engine, 1, "130.00")
    core.update_balance(1, "10.00", "subtract", kind="payment")
    (task,) = realtime_tasks(engine, 1)
    (event,) = task.resolution["events"]
    assert (event["action"], event["from"], event["to"], event["by"]) == (
        "open", None, "open", "balance core (realtime check)")
    assert event["values"] == {"stored_balance": "130.00", "ledger_sum": "100.00", "drift": "30.00",
                               "cause": "chain_mismatch"}
    assert event["at"]


def test_a_bogus_kind_writes_nothing_and_names_the_list(engine: Engine, core: BalanceManager) -> None:
    """kind='bogus' (and 'Payment ', and a 100,000-character kind) is refused before anything is written:
    no balance, no entry, no task; the error lists the allowed kinds and where to add one."""
    make_customer(engine, 1, "10.00")
    post_entry(engine, 1, "10.00", balance_after="10.00")
    before = state(engine)
    for kind in ("bogus", "Payment ", "payment" * 20_000):
        with pytest.raises(UnknownEntryKindError, match=r"allowed: .*payment.*entry_kinds\.json"):
            core.update_balance(1, "1.00", kind=kind)
        with pytest.raises(UnknownEntryKindError):
            core.update_balance(1, "1.00", kind=kind, idempotency_key=f"k-{len(kind)}")
    assert state(engine) == before


def test_no_false_alarm_after_ledger_policy_correction(engine: Engine, core: BalanceManager) -> None:
    """After policy ledger fixes a duplicated entry, the next payment follows the anchor: no false realtime task."""
    make_customer(engine, 1)
    core.update_balance(1, "20.00", kind="deposit")
    post_entry(engine, 1, "20.00", balance_after="20.00")  # the deposit duplicated, balance_after and all
    assert core.validate_balance(1).drift == D("-20.00")
    rec = core.reconcile_balance(1, "ledger")
    assert rec.balance_after == D("40.00")
    paid = core.update_balance(1, "5.00", "subtract", kind="payment")
    assert paid.chain_drift is None and realtime_tasks(engine) == []
    set_cached_balance(engine, 1, "1.00")  # an anchor does not hide a later write around the ledger
    assert core.update_balance(1, "1.00", kind="deposit").chain_drift == D("-34.00")
    assert len(realtime_tasks(engine, 1)) == 1


def test_ordinary_payments_take_the_one_statement_path(engine: Engine, core: BalanceManager) -> None:
    """Payments on a consistent chain use the one guarded statement; only a broken chain or a refusal locks."""
    make_customer(engine, 1)
    core.update_balance(1, "10.00", kind="deposit")
    core.update_balance(1, "4.00", "subtract", kind="payment")
    post_entry(engine, 1, "6.00", balance_after="6.00")  # duplicate: SUM 12, balance 6
    core.reconcile_balance(1, "ledger")
    core.update_balance(1, "1.00", kind="deposit")
    set_cached_balance(engine, 1, "14.00")
    core.reconcile_balance(1, "balance")
    core.update_balance(1, "1.00", kind="deposit")
    make_customer(engine, 2, "3.00")
    post_entry(engine, 2, "3.00")  # legacy: no balance_after
    core.update_balance(2, "1.00", kind="deposit")
    assert core.stats()["locked_path"] == 0 and realtime_tasks(engine) == []
    set_cached_balance(engine, 1, "0.00")
    assert core.update_balance(1, "1.00", kind="deposit").chain_drift == D("-15.00")
    with pytest.raises(InsufficientFundsError):
        core.update_balance(1, "5.00", "subtract", kind="payment")
    assert core.stats()["locked_path"] == 2


def test_realtime_check_edges(engine: Engine, core: BalanceManager) -> None:
    """A customer without entries must be at 0; legacy entries without balance_after are not checked."""
    make_customer(engine, 1, "25.00")  # opening balance with no entry: a drift
    assert core.update_balance(1, "1.00", kind="deposit").chain_drift == D("25.00")
    make_customer(engine, 2, "7.00")
    post_entry(engine, 2, "3.00")  # legacy entry: balance_after NULL
    assert core.update_balance(2, "1.00", kind="deposit").chain_drift is None
    assert [t.customer_id for t in realtime_tasks(engine)] == [1]


def test_transfer_runs_the_realtime_check_on_both_sides(engine: Engine, core: BalanceManager) -> None:
    """A transfer from a customer whose balance was written around the ledger opens a task for that side only."""
    make_customer(engine, 1)
    make_customer(engine, 2)
    core.update_balance(1, "10.00", kind="deposit")
    set_cached_balance(engine, 1, "15.00")
    moved = core.transfer(1, 2, "3.00")
    assert (moved.outgoing.chain_drift, moved.incoming.chain_drift) == (D("5.00"), None)
    assert [t.customer_id for t in realtime_tasks(engine)] == [1]


# -- pinned connection ------------------------------------------------------------------------------------

def idle_in_transaction(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("select count(*) from pg_stat_activity where datname = current_database() "
                                     "and state like 'idle in transaction%'")).scalar_one())


def test_pinned_manager_runs_everything_on_one_connection(engine: Engine, core: BalanceManager) -> None:
    """Inside pinned() every operation shares one connection, none leaves a transaction open, errors keep it usable."""
    pool = engine.pool
    assert isinstance(pool, QueuePool)
    make_customer(engine, 1)
    make_customer(engine, 2)
    with core.pinned() as mine:
        assert mine.update_balance(1, "10.00", kind="deposit").balance_after == D("10.00")
        with pytest.raises(InsufficientFundsError):
            mine.update_balance(1, "50.00", "subtract", kind="payment")
        with pytest.raises(CustomerNotFoundError):
            mine.update_balance(9, "1.00", kind="deposit")
        first = mine.transfer(1, 2, "4.00", idempotency_key="t-1")
        assert mine.transfer(1, 2, "4.00", idempotency_key="t-1").outgoing.entry_id == first.outgoing.entry_id
        set_cached_balance(engine, 2, "5.00")
        assert mine.update_balance(2, "1.00", kind="deposit").chain_drift == D("1.00")
        assert mine.reconcile_balance(2, "ledger").balance_after == D("5.00")
        assert (mine.get_balance(2), mine.validate_balance(2).ok) == (D("5.00"), True)
        assert pool.checkedout() == 1
        assert idle_in_transaction(engine) == 0
    assert pool.checkedout() == 0
    assert mine.update_balance(1, "1.00", kind="deposit").balance_after == D("7.00")  # pooled again
    assert_chain_is_running_sum(engine, 1)
    assert len(realtime_tasks(engine, 2)) == 1


# -- retries ----------------------------------------------------------------------------------------------

def inject_failures(engine: Engine, count: int, sqlstate: str) -> Callable[[], int]:
    """Make the first ``count`` entry inserts fail with ``sqlstate``; return a reader of the attempt count."""
    with engine.begin() as conn:
        conn.execute(text("create sequence test_attempts"))
        conn.execute(text(f"""
            create function test_fail() returns trigger language plpgsql as $$
            begin
                if nextval('test_attempts') <= {count} then
                    raise exception 'injected failure' using errcode = '{sqlstate}';
                end if;
                return new;
            end $$"""))
        conn.execute(text("create trigger test_fail before insert on customer_ledger_entries "
                          "for each row execute function test_fail()"))

    def attempts() -> int:
        with engine.connect() as conn:
            return int(conn.execute(text("select last_value from test_attempts")).scalar_one())
    return attempts


@pytest.mark.parametrize("sqlstate", ["40001", "40P01"])
def test_serialization_failures_and_deadlocks_are_retried(engine: Engine, sqlstate: str) -> None:
    """40001 and 40P01 are retried (bounded) and the change then lands exactly once."""
    make_customer(engine, 1)
    attempts = inject_failures(engine, 2, sqlstate)
    core = BalanceManager(engine, max_retries=3)
    change = core.update_balance(1, "5.00", kind="deposit")
    assert attempts() == 3 and core.retries == 2
    assert change.balance_after == D("5.00") and entry_count(engine, 1) == 1
    assert_chain_is_running_sum(engine, 1)


def test_exhausted_retries_raise_transient_error_and_write_nothing(engine: Engine) -> None:
    """When every attempt fails, TransientDatabaseError is raised after 1 + max_retries attempts; nothing written."""
    make_customer(engine, 1, "0.00")
    attempts = inject_failures(engine, 100, "40001")
    core = BalanceManager(engine, max_retries=2)
    before = state(engine)
    with pytest.raises(TransientDatabaseError, match="gave up after 3 attempts"):
        core.update_balance(1, "5.00", kind="deposit")
    assert attempts() == 3 and state(engine) == before


def test_other_database_errors_are_not_retried_or_swallowed(engine: Engine) -> None:
    """Any other SQLSTATE (here a check violation) propagates at once, after exactly one attempt."""
    make_customer(engine, 1, "0.00")
    attempts = inject_failures(engine, 100, "23514")
    core = BalanceManager(engine, max_retries=5)
    with pytest.raises(DBAPIError, match="injected failure"):
        core.update_balance(1, "5.00", kind="deposit")
    assert attempts() == 1 and core.retries == 0 and entry_count(engine) == 0


# -- TTL cache ------------------------------------------------------------------------------------------------

class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_cache_is_invalidated_by_own_writes(engine: Engine) -> None:
    """A write through the manager is visible to its next read at once, whatever the ttl."""
    make_customer(engine, 1)
    clock = FakeClock()
    core = BalanceManager(engine, cache_ttl=60, clock=clock)
    assert core.get_balance(1) == D("0.00")
    core.update_balance(1, "8.00", kind="deposit")
    assert core.get_balance(1) == D("8.00")
    make_customer(engine, 2)
    core.transfer(1, 2, "3.00")
    assert (core.get_balance(1), core.get_balance(2)) == (D("5.00"), D("3.00"))
    core.reconcile_balance(2, "ledger")
    assert core.get_balance(2) == D("3.00")


def test_cache_serves_other_writers_changes_after_ttl(engine: Engine) -> None:
    """A write elsewhere is not seen before cache_ttl has passed, and is seen once it has."""
    make_customer(engine, 1)
    clock = FakeClock()
    cached = BalanceManager(engine, cache_ttl=5, clock=clock)
    assert cached.get_balance(1) == D("0.00")
    BalanceManager(engine).update_balance(1, "4.00", kind="deposit")
    clock.now += 4.9
    assert cached.get_balance(1) == D("0.00")  # stale, within the documented bound
    clock.now += 0.2
    assert cached.get_balance(1) == D("4.00")
    uncached = BalanceManager(engine)
    set_cached_balance(engine, 1, "6.00")
    assert uncached.get_balance(1) == D("6.00")
    with pytest.raises(CustomerNotFoundError):
        cached.get_balance(2)


def test_cache_ttl_must_be_positive(engine: Engine) -> None:
    """A zero, negative or boolean ttl is refused by name."""
    for ttl in (0, -1, True):
        with pytest.raises(InvalidOperationError, match="cache_ttl"):
            BalanceManager(engine, cache_ttl=ttl)


# -- the law, by property -----------------------------------------------------------------------------------

_ids = itertools.count(10_000)
_cents = st.integers(min_value=1, max_value=50_000).map(lambda c: D(c).scaleb(-2))
_who = st.integers(min_value=0, max_value=2)
_operation = st.one_of(
    st.tuples(st.just("add"), _who, _cents, st.booleans()),
    st.tuples(st.just("subtract"), _who, _cents, st.booleans()),
    st.tuples(st.just("transfer"), _who, _who, _cents, st.booleans()),
    st.tuples(st.just("reconcile"), _who, st.sampled_from(["ledger", "balance"])),
    st.tuples(st.just("replay")),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=st.lists(_operation, min_size=1, max_size=25))
def test_random_operations_keep_balance_equal_to_ledger(engine: Engine, operations: list[tuple[Any, ...]]) -> None:
    """Random adds, subtracts, transfers, reconciles and replays keep balance == SUM == model and the chain."""
    core = BalanceManager(engine)
    ids = [make_customer(engine, next(_ids)) for _ in range(3)]
    model = dict.fromkeys(ids, D("0.00"))
    keyed: list[tuple[tuple[Any, ...], object]] = []
    for number, op in enumerate(operations):
        key = f"{ids[0]}-{number}"
        if op[0] in ("add", "subtract"):
            _, who, amount, with_key = op
            customer = ids[who]
            delta = amount if op[0] == "add" else -amount
            if model[customer] + delta < 0:
                with pytest.raises(InsufficientFundsError):
                    core.update_balance(customer, amount, op[0], kind="payment")
                continue
            args = (customer, amount, op[0])
            result: object = core.update_balance(*args, kind="payment", idempotency_key=key if with_key else None)
            model[customer] += delta
            if with_key:
                keyed.append((("update", *args, key), result))
        elif op[0] == "transfer":
            _, source, target, amount, with_key = op
            if source == target:
                with pytest.raises(InvalidOperationError):
                    core.transfer(ids[source], ids[target], amount)
                continue
            if model[ids[source]] < amount:
                with pytest.raises(InsufficientFundsError):
                    core.transfer(ids[source], ids[target], amount)
                continue
            args = (ids[source], ids[target], amount)
            result = core.transfer(*args, idempotency_key=key if with_key else None)
            model[ids[source]] -= amount
            model[ids[target]] += amount
            if with_key:
                keyed.append((("transfer", *args, key), result))
        elif op[0] == "reconcile":
            rec = core.reconcile_balance(ids[op[1]], op[2])
            assert not rec.changed and rec.entry_id is None
        elif keyed:
            (what, *call, key), first = keyed[-1]
            if what == "update":
                again: Any = core.update_balance(*call, kind="payment", idempotency_key=key)
                assert again.replayed and again.entry_id == first.entry_id  # type: ignore[attr-defined]
            else:
                again = core.transfer(*call, idempotency_key=key)
                assert again.replayed and again.incoming.entry_id == first.incoming.entry_id  # type: ignore[attr-defined]
    for customer in ids:
        assert cached_balance(engine, customer) == model[customer]
        assert_chain_is_running_sum(engine, customer)
    assert realtime_tasks(engine) == []


# -- migration 0002 ------------------------------------------------------------------------------------------

def test_migration_0002_downgrades_and_upgrades_again(empty_db_url: URL) -> None:
    """Migration 0002 adds reconciler.balance_reconciliations; downgrading to 0001 removes only it."""
    from sqlalchemy import inspect

    from reconciler import migrate
    from reconciler.db import make_engine

    eng = make_engine(empty_db_url)
    try:
        migrate.upgrade(eng, "0002")
        assert migrate.current_revision(eng) == "0002"
        assert "balance_reconciliations" in inspect(eng).get_table_names(schema="reconciler")
        migrate.downgrade(eng, "0001")
        assert migrate.current_revision(eng) == "0001"
        tables = set(inspect(eng).get_table_names(schema="reconciler"))
        assert "balance_reconciliations" not in tables and "tasks" in tables
        migrate.upgrade(eng)
        assert "balance_reconciliations" in inspect(eng).get_table_names(schema="reconciler")
    finally:
        eng.dispose()
