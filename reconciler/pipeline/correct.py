"""The corrections step of a run: plan each batch of unresolved tasks, then carry the plan out through the core.

Invariant: the plan (:mod:`reconciler.correction_plan`) is decided on each task's drift as it stands now
(read in one statement), under THIS run's guardrails; the executor (:mod:`reconciler.correction_executor`)
corrects through the balance core only, re-verified under the row lock. Applying this step twice corrects
nothing twice.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence
from decimal import Decimal

from sqlalchemy import Engine, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.types import BigInteger

from reconciler import runs, tasks
from reconciler.correction_executor import execute_plan
from reconciler.correction_plan import Step, halt_reason, needs_current_drift, plan_corrections
from reconciler.corrections import (
    CorrectionResult,
    Outcome,
    TaskRef,
    apply_correction,
    correction_engine,
)

from .incremental import ratio_population
from .steps import HEARTBEAT_INTERVAL, _local_timeouts, _options

#: Open tasks considered per batch when correcting (memory stays flat whatever the drift count).
CORRECTION_BATCH = 500


_CURRENT_DRIFTS = text("""
    select c.id, c.balance - coalesce((select sum(e.amount) from customer_ledger_entries e
                                       where e.customer_id = c.id), 0) as drift
    from customers c where c.id = any(cast(:ids as bigint[]))""").bindparams(bindparam("ids", type_=ARRAY(BigInteger)))


def _current_drifts(engine: Engine, customer_ids: Sequence[int]) -> dict[int, Decimal]:
    """The customers' drifts now, read in ONE statement (one snapshot: never half of a concurrent write)."""
    with engine.connect() as conn:
        rows = conn.execute(_CURRENT_DRIFTS, {"ids": list(customer_ids)}).all()
    return {int(row.id): Decimal(row.drift) for row in rows}



#: At most this many busy customers are listed on a run (all are counted).
MAX_BUSY_LISTED = 1_000


def _busy_entries(engine: Engine, busy: Sequence[CorrectionResult]) -> list[dict[str, object]]:
    """The busy customers as a run lists them: customer, task, who holds the lock, runs in a row busy."""
    listed = sorted(busy, key=lambda result: result.task.customer_id)[:MAX_BUSY_LISTED]
    with engine.connect() as conn:
        streaks = tasks.busy_streaks(conn, [result.task.task_id for result in listed])
    return [{"customer_id": result.task.customer_id, "task_id": result.task.task_id,
             "lockers": [locker.to_json() for locker in result.lockers],
             "runs_in_a_row": streaks.get(result.task.task_id, 1)} for result in listed]


def apply_run_corrections(engine: Engine, run_id: int) -> dict[str, object]:
    """Apply the guardrails and correct the run's unresolved tasks through the balance core.

    Halt check first: when too many customers drift (``max_drift_ratio``), nothing is corrected and the run
    will finish ``halted``. Otherwise each unresolved task the run saw is planned
    (:func:`reconciler.correction_plan.plan_corrections`) on its drift as it stands now: sent to review
    (beyond ``auto_correct_limit``), dismissed (vanished), left as it is (dry run, auto-correct off) or
    corrected, re-verified under the row lock; the guardrails are those of THIS run, so a needs_review task
    is corrected by a run whose limit covers it. A transient lock timeout leaves the task open for the next
    run. Applying this step twice corrects nothing twice. Tasks are handled in batches (memory stays flat
    whatever the drift count).
    """
    from reconciler.balances import BalanceManager  # noqa: PLC0415  (the core; imported where it is used)

    with engine.begin() as conn:
        _local_timeouts(conn)
        run = runs.require_running(conn, run_id)
        options = _options(run)
        totals = runs.tally(conn, run_id)
        runs.store_totals(conn, run_id, totals)
    guardrails = options.guardrails
    population = totals.customers_checked
    halted_reason = halt_reason(totals.drift_count, population, guardrails)
    if halted_reason is not None:
        # Only then can the population matter: a larger one gives a smaller ratio, so a ratio within bounds over
        # the customers checked is within bounds over every customer (an incremental run's count is of them all).
        population = ratio_population(engine, run["mode"], population)
        halted_reason = halt_reason(totals.drift_count, population, guardrails)
    counts: Counter[str] = Counter()
    busy: list[CorrectionResult] = []
    by = f"run {run_id}"
    if halted_reason is None:
        local = threading.local()
        with correction_engine(engine, pool_size=options.workers) as safe_engine:

            def correct(task: TaskRef, policy: str) -> CorrectionResult:
                if not hasattr(local, "manager"):
                    local.manager = BalanceManager(safe_engine)
                return apply_correction(local.manager, task, policy=policy, tolerance=options.tolerance,
                                        audit={"by": by})

            def note(step: Step) -> str:
                if step.replay:
                    return f"correction left in flight, completed by run {run_id}"
                return f"auto-corrected by run {run_id} ({step.reason})"

            after = 0
            while True:
                with engine.connect() as conn:
                    runs.require_running(conn, run_id)  # a run found dead meanwhile corrects nothing more
                    batch = tasks.correction_candidates(conn, run_id, after_id=after, limit=CORRECTION_BATCH)
                if not batch:
                    break
                after = batch[-1].task_id
                wanted = [c.customer_id for c in batch if needs_current_drift(c, guardrails)]
                now = _current_drifts(engine, wanted) if wanted else {}
                plan = plan_corrections(batch, now, guardrails, policy=options.policy,
                                        drift_count=totals.drift_count, customers_checked=population)
                done = execute_plan(engine, plan, correct, by=by, run_id=run_id, notes=note,
                                    tolerance=options.tolerance, workers=options.workers, prepare=_local_timeouts)
                counts.update(done.counts)
                busy.extend(r for r in done.results.values() if r.outcome is Outcome.BUSY)
                with engine.begin() as conn:
                    runs.heartbeat(conn, run_id, min_interval=HEARTBEAT_INTERVAL)
    result: dict[str, object] = {"halted_reason": halted_reason, **{key: counts.get(key, 0) for key in (
        "corrected", "vanished", "deferred", "busy", "needs_review", "would_correct", "left_open", "pending_left",
        "already_resolved")}}
    busy_listed = _busy_entries(engine, busy)
    with engine.begin() as conn:
        patch: dict[str, object] = {"corrections": {k: v for k, v in result.items() if k != "halted_reason"},
                                    "busy": busy_listed}
        if halted_reason is not None:
            patch["halted_reason"] = halted_reason
        runs.merge_outcome(conn, run_id, patch)
        runs.heartbeat(conn, run_id)
    return result
