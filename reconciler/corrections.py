"""Guarded corrections: what to do with a drift (pure rules) and doing it through the balance core only.

Invariant: nothing here writes a balance or a ledger entry itself. A correction is one call to
:meth:`reconciler.balances.BalanceManager.reconcile_balance`, which re-reads the customer under its row
lock and corrects the drift as it stands then (or leaves it alone when it has vanished). The idempotency
key is derived from the task, so applying the same task's correction twice changes nothing.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from sqlalchemy import Engine, create_engine
from sqlalchemy.exc import DBAPIError

from reconciler.db_errors import is_transient
from reconciler.errors import CustomerBusyError
from reconciler.money import DEFAULT_TOLERANCE, format_money
from reconciler.vocabulary import DEFAULT_POLICY, KEY_PREFIX, POLICIES, check_policy, correction_key

if TYPE_CHECKING:
    from reconciler.balances import BalanceManager, Reconciliation
    from reconciler.row_locks import RowLocker

__all__ = ["DEFAULT_POLICY", "KEY_PREFIX", "POLICIES", "check_policy", "correction_key", "is_transient"]

#: A correction waits at most this long for a customer's row lock, so a run never holds up payments.
DEFAULT_LOCK_TIMEOUT = dt.timedelta(seconds=2)
#: No statement of a run runs longer than this.
DEFAULT_STATEMENT_TIMEOUT = dt.timedelta(seconds=60)
APPLICATION_NAME = "reconciler run"
#: A customer whose correction was skipped as busy this many runs in a row is called out in the report and
#: in alerts: something holds its row lock for far too long.
BUSY_RUNS_CALLOUT = 3


class Decision(enum.StrEnum):
    """What a run does with one open task."""

    CORRECT = "correct"            # correct it now, through the core
    NEEDS_REVIEW = "needs_review"  # beyond auto_correct_limit: a person must approve
    DRY_RUN = "dry_run"            # would be corrected; dry run changes no balance and no entry
    MANUAL = "manual"              # auto_correct is off: left open for a person
    HALTED = "halted"              # the run halted on max_drift_ratio: nothing is corrected


@dataclass(frozen=True)
class Guardrails:
    """The guardrails of one run (from its options)."""

    dry_run: bool = False
    auto_correct: bool = True
    auto_correct_limit: Decimal = Decimal("100.00")
    max_drift_ratio: Decimal = Decimal("0.05")
    #: A drift within this (re-read now) has vanished: the task is dismissed, never corrected.
    tolerance: Decimal = DEFAULT_TOLERANCE


@dataclass(frozen=True)
class Verdict:
    """A decision and the reason a person reads in the audit trail."""

    decision: Decision
    reason: str


def judge_drift_ratio(drift_count: int, customers_checked: int, max_drift_ratio: Decimal) -> str | None:
    """The reason to halt corrections when too many customers drift at once, or None.

    Halts when ``drift_count / customers_checked > max_drift_ratio`` (strictly); a ratio of 1 never halts.
    """
    if customers_checked <= 0 or drift_count <= 0:
        return None
    ratio = Decimal(drift_count) / Decimal(customers_checked)
    if ratio <= max_drift_ratio:
        return None
    return (
        f"{drift_count} of {customers_checked} customers drift ({_percent(ratio)}), more than max_drift_ratio "
        f"{max_drift_ratio} ({_percent(max_drift_ratio)}): corrections halted, nothing corrected. Find the cause "
        f"first; rerun with a higher --max-drift-ratio (1 disables the halt) to correct them anyway"
    )


def _percent(ratio: Decimal) -> str:
    return f"{(ratio * 100).quantize(Decimal('0.01'))}%"


def decide_correction(drift: Decimal, guardrails: Guardrails, *, halted: bool = False) -> Verdict:
    """Decide what a run does with a task whose drift is ``drift`` (pure).

    Order: a halted run corrects nothing; a drift beyond ``auto_correct_limit`` needs a person's review
    (also in a dry run or with auto-correct off: a person must look at it either way); a dry run and
    auto-correct off leave the task open; everything else is corrected.
    """
    if halted:
        return Verdict(Decision.HALTED, "run halted on max_drift_ratio; nothing corrected")
    if abs(drift) > guardrails.auto_correct_limit:
        return Verdict(
            Decision.NEEDS_REVIEW,
            f"drift {format_money(drift)} is beyond auto_correct_limit {format_money(guardrails.auto_correct_limit)}"
            f" (by {format_money(abs(drift) - guardrails.auto_correct_limit)}): approve it with "
            f"`reconciler tasks resolve TASK_ID --action correct --by NAME --note TEXT`",
        )
    if guardrails.dry_run:
        return Verdict(Decision.DRY_RUN, "dry run: would be corrected, nothing written")
    if not guardrails.auto_correct:
        return Verdict(Decision.MANUAL, "auto_correct is off: left open for a person")
    return Verdict(Decision.CORRECT, "within auto_correct_limit")


class Outcome(enum.StrEnum):
    """What happened when a correction was applied."""

    CORRECTED = "corrected"  # the core changed the balance (or replayed the first correction)
    VANISHED = "vanished"    # under the row lock the drift was within tolerance: nothing written
    DEFERRED = "deferred"    # a transient lock or statement timeout: nothing written, retried next run
    BUSY = "busy"            # another session holds the customer's row lock: skipped at once, retried next run

    # A new outcome is one member here, its line in the executor's recorder table
    # (reconciler.correction_executor._RECORDED_AS) and, when it resolves nothing, one entry in
    # reconciler.tasks.EVENT_ONLY_OUTCOMES.


@dataclass(frozen=True)
class TaskRef:
    """The task a correction belongs to."""

    task_id: int
    customer_id: int
    run_id: int | None = None


@dataclass(frozen=True)
class CorrectionResult:
    """The outcome of :func:`apply_correction`; ``reconciliation`` is the core's answer when it gave one."""

    task: TaskRef
    policy: str
    outcome: Outcome
    reason: str
    reconciliation: Reconciliation | None = None
    lockers: tuple[RowLocker, ...] = ()  # for BUSY: the sessions seen holding the customer's row lock

    def values(self) -> dict[str, object]:
        """The audit values: old and new balance, ledger sum, drift, entry, key (decimals as strings)."""
        values: dict[str, object] = {"policy": self.policy, "idempotency_key": correction_key(self.task.task_id)}
        if self.outcome is Outcome.BUSY:
            values["lockers"] = [locker.to_json() for locker in self.lockers]
        rec = self.reconciliation
        if rec is not None:
            values.update({
                "old_balance": str(rec.stored_before),
                "new_balance": str(rec.balance_after),
                "ledger_sum": str(rec.ledger_sum),
                "drift": str(rec.drift_before),
                "entry_id": rec.entry_id,
                "changed": rec.changed,
            })
        return values


def apply_correction(manager: BalanceManager, task: TaskRef, *, policy: str = DEFAULT_POLICY,
                     tolerance: Decimal = DEFAULT_TOLERANCE,
                     audit: Mapping[str, object] | None = None, nowait: bool = True) -> CorrectionResult:
    """Correct the task's customer through the core, re-verified under the row lock.

    A correction never waits for a customer another session holds locked (a payment in flight, a batch job's
    long transaction): with ``nowait`` (the default) it is skipped at once as :attr:`Outcome.BUSY`, naming
    the sessions holding the lock, and the task stays open for the next run.

    The drift is corrected as it stands under the lock (it may have changed since the comparison); a drift
    that vanished is left alone (:attr:`Outcome.VANISHED`). A transient lock or statement timeout writes
    nothing and returns :attr:`Outcome.DEFERRED` so the task stays open for the next run. The idempotency
    key comes from the task: a second call replays the first result and writes nothing.
    """
    check_policy(policy)
    details: dict[str, object] = {"task_id": task.task_id, "run_id": task.run_id, "policy": policy}
    details.update(audit or {})
    try:
        rec = manager.reconcile_balance(
            task.customer_id, policy, tolerance=tolerance, idempotency_key=correction_key(task.task_id),
            reference=f"reconciler task {task.task_id}", audit=details, nowait=nowait,
        )
    except CustomerBusyError as busy:
        return CorrectionResult(task, policy, Outcome.BUSY, str(busy), lockers=tuple(busy.lockers))
    except Exception as exc:
        if not is_transient(exc):
            raise
        cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
        reason = (str(cause).strip().splitlines() or [""])[0]
        return CorrectionResult(task, policy, Outcome.DEFERRED,
                                f"deferred, nothing written ({type(cause).__name__}: {reason}); the next run retries")
    if rec.changed:
        how = ("balance set to the ledger sum" if policy == "ledger"
               else "reconciliation_adjustment entry posted")
        return CorrectionResult(
            task, policy, Outcome.CORRECTED,
            f"{how}: balance {format_money(rec.stored_before)} -> {format_money(rec.balance_after)}, "
            f"drift {format_money(rec.drift_before)} as it stood under the row lock",
            rec,
        )
    return CorrectionResult(
        task, policy, Outcome.VANISHED,
        f"drift vanished: under the row lock balance {format_money(rec.stored_before)} and ledger sum "
        f"{format_money(rec.ledger_sum)} agree within tolerance {tolerance}; nothing written",
        rec,
    )


def _millis(value: dt.timedelta) -> int:
    return max(1, int(value.total_seconds() * 1000))


@contextmanager
def correction_engine(engine: Engine, *, pool_size: int = 2, lock_timeout: dt.timedelta | None = None,
                      statement_timeout: dt.timedelta | None = None) -> Iterator[Engine]:
    """An engine on the same database whose every session has ``lock_timeout`` and ``statement_timeout`` set
    (default :data:`DEFAULT_LOCK_TIMEOUT`, :data:`DEFAULT_STATEMENT_TIMEOUT`), for the core's correction
    transactions (which open their own connections); disposed on exit."""
    url = engine.url
    lock = lock_timeout if lock_timeout is not None else DEFAULT_LOCK_TIMEOUT
    statement = statement_timeout if statement_timeout is not None else DEFAULT_STATEMENT_TIMEOUT
    settings = f"-c lock_timeout={_millis(lock)} -c statement_timeout={_millis(statement)}"
    existing = url.query.get("options")
    if isinstance(existing, str) and existing.strip():
        settings = f"{existing} {settings}"
    derived = create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True,
                            connect_args={"options": settings, "application_name": APPLICATION_NAME})
    try:
        yield derived
    finally:
        derived.dispose()
