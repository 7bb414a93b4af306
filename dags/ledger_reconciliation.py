"""
# Ledger reconciliation

Finds every customer whose cached balance (`customers.balance`) drifted from the ledger
(`SUM(customer_ledger_entries.amount)`), explains it, opens a task for it and corrects it through the
balance core. Nightly at 02:00 UTC (`RECONCILER_SCHEDULE`), and by hand after an incident with the
settings below (a customer range or ids, tolerance, policy, guardrails, dry run).

**Steps** (each calls one `reconciler.pipeline` function; every step can be retried or rerun and
changes nothing the second time; findings are staged in `reconciler.findings` before anything acts):
`start_run` → `plan_chunks` → `compare_chunk` (one mapped task per chunk of customer ids, in pool
`ledger_db`) → `check_quality` → `open_tasks` → `apply_corrections` → `review_corrections` → `apply_review`
→ `finish_run` → `build_report` → `send_alerts`.

**Four eyes**: when corrections went to `needs_review` (drift above `auto_correct_limit`),
`review_corrections` waits (up to `RECONCILER_APPROVAL_TIMEOUT_MINUTES`, default 12 h) in Airflow's
"Required actions" for a second person: approve all, approve selected task ids, or reject with a note. The
person who triggered the run cannot approve it; `RECONCILER_APPROVERS` (comma-separated user names) lists who
may, and is required in practice for scheduled runs. Approved tasks are corrected through the balance core
with the approver in their audit trail; rejected ones stay in review with the note; no answer in time
corrects nothing and the alert says so.

**Mode** (Param `mode`): scheduled runs are incremental (only the customers touched since the last verified
point, from the guard's change feed), with a full sweep every `RECONCILER_FULL_SWEEP_DAYS` days (default 7),
and full whenever no verified point exists or the guard reports a disabled trigger; manual runs default to
full. The run records its mode and why (`reconciler.runs.mode`, `mode_reason`).

**Database**: the Airflow connection `ledger_db`, else `RECONCILER_DATABASE_URL`, else the embedded
PostgreSQL under `.reconciler/`. When the connection `ledger_db_replica` (else `RECONCILER_READ_DATABASE_URL`)
exists, every read-only step reads from it: comparisons, explanations, quality checks, the report (corrections
always re-verify on the primary). Read-only steps run in READ ONLY transactions either way.

**Alerts**: `send_alerts` runs last whatever happened before it (trigger rule `all_done`) and sends ONE alert
per DAG run, however many mapped tasks failed: a halted or failed run, or drift found above
`alert_drift_above`. It goes to the task log, by mail (SmtpNotifier, connection `reconciler_smtp`) and to a
chat webhook (HttpNotifier, connection `reconciler_alerts`) when they exist, with the run summary, links to
this DAG run and the failed task's log, and the report's location. A failing task marks the run `failed`.
The `ledger_reconciliation_watchdog` DAG alerts when no run has succeeded for 26 hours.

**Results**: `reconciler tasks list --run RUN_ID`, the report folder printed by `build_report`. Each finished
run (succeeded or halted) emits an event of the asset `reconciler://ledger/balances` with its figures and
report location (see `dags/examples/finance_export.py`); `send_alerts` sends the `reconciler.run.*` metrics
through Airflow's Stats (StatsD or OpenTelemetry).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from typing import Any

import pendulum
from airflow.sdk import Param, chain, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException
from reconciler_airflow import (
    BALANCES,
    LEDGER_INPUTS,
    LEDGER_POOL,
    RunNotClean,
    balances_event,
    emit_run_metrics,
    env_int,
    jsonable,
    ledger_step,
    mark_run_failed,
    replica_engine,
    run_id_of,
    schedule_from_env,
    trigger_of,
)
from reconciler_alerts import deliver_alert, failed_task_instances, links_for
from reconciler_review import FourEyesReview, configured_approvers, decision_from, trigger_user

# Light modules (no database, no heavy imports): the Params' bounds and defaults are the library's own.
from reconciler.run_limits import (
    DEFAULT_AUTO_CORRECT_LIMIT,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MAX_DRIFT_RATIO,
    DEFAULT_POLICY,
    DEFAULT_TOLERANCE,
    MAX_CHUNK_SIZE,
    MIN_CHUNK_SIZE,
    POLICIES,
)

log = logging.getLogger(__name__)
DEFAULT_SCHEDULE = "0 2 * * *"
TASK_RETRIES = env_int("RECONCILER_TASK_RETRIES", 2)
RETRY_DELAY = dt.timedelta(seconds=env_int("RECONCILER_RETRY_DELAY_SECONDS", 30))
#: How long the approval step waits for an answer before it corrects nothing (default 12 hours).
APPROVAL_TIMEOUT = dt.timedelta(minutes=env_int("RECONCILER_APPROVAL_TIMEOUT_MINUTES", 12 * 60, minimum=1))
MONEY_PATTERN = r"^[0-9]{1,16}(\.[0-9]{1,2})?$"
RATIO_PATTERN = r"^(0(\.[0-9]{1,6})?|1(\.0{1,6})?)$"
#: The params that are run options (reconciler.pipeline.RunOptions); the others configure the DAG itself.
RUN_OPTION_PARAMS = ("tolerance", "chunk_size", "from_id", "to_id", "customer_ids", "policy", "auto_correct",
                     "auto_correct_limit", "max_drift_ratio", "dry_run")

PARAMS = {
    "tolerance": Param(
        str(DEFAULT_TOLERANCE), type="string", pattern=MONEY_PATTERN, title="Tolerance",
        description="A customer drifts when |balance - ledger sum| is strictly greater than this amount "
                    "(money with at most 2 decimals, e.g. 0.01).",
        section="Detection"),
    "chunk_size": Param(
        DEFAULT_CHUNK_SIZE, type="integer", minimum=MIN_CHUNK_SIZE, maximum=MAX_CHUNK_SIZE, title="Chunk size",
        description="Customers per chunk; each chunk is one compare_chunk task (one SQL statement).",
        section="Detection"),
    "from_id": Param(
        None, type=["null", "integer"], minimum=0, title="From customer id",
        description="Only customers with id >= this (empty: from the first customer).", section="Scope"),
    "to_id": Param(
        None, type=["null", "integer"], minimum=0, title="To customer id",
        description="Only customers with id <= this (empty: to the last customer).", section="Scope"),
    "customer_ids": Param(
        None, type=["null", "array"], items={"type": "integer", "minimum": 0}, uniqueItems=True,
        maxItems=100_000, title="Customer ids",
        description="Only these customers (one id per line; empty: all customers in the range).", section="Scope"),
    "policy": Param(
        DEFAULT_POLICY, type="string", enum=list(POLICIES), title="Correction policy",
        values_display={"ledger": "ledger: set the balance to the ledger sum",
                        "balance": "balance: post an adjusting ledger entry"},
        description="How a drift is corrected: the ledger is right (default) or the cached balance is.",
        section="Corrections"),
    "auto_correct": Param(
        True, type="boolean", title="Correct automatically",
        description="Correct drifts up to the limit below; off: only open tasks.", section="Corrections"),
    "auto_correct_limit": Param(
        str(DEFAULT_AUTO_CORRECT_LIMIT), type="string", pattern=MONEY_PATTERN, title="Auto-correct limit",
        description="Larger drifts go to needs_review instead of being corrected (money, e.g. 100.00).",
        section="Corrections"),
    "max_drift_ratio": Param(
        str(DEFAULT_MAX_DRIFT_RATIO), type="string", pattern=RATIO_PATTERN, title="Max drift ratio",
        description="Halt all corrections when more than this share of checked customers drift "
                    "(0 to 1, e.g. 0.05; 1 disables the halt).",
        section="Corrections"),
    "dry_run": Param(
        False, type="boolean", title="Dry run",
        description="Record the run and its tasks, change no balance and no ledger entry.", section="Corrections"),
    "mode": Param(
        None, type=["null", "string"], enum=[None, "incremental", "full"], title="Mode",
        values_display={"incremental": "incremental: only the customers touched since the last verified point",
                        "full": "full: every customer"},
        description="Empty: scheduled runs are incremental (full every RECONCILER_FULL_SWEEP_DAYS days, default 7, "
                    "and whenever there is no verified point or the guard reports a disabled trigger); manual "
                    "runs are full. The run records why it was full.",
        section="Scope"),
    "alert_drift_above": Param(
        os.environ.get("RECONCILER_ALERT_DRIFT_ABOVE", "1000.00"), type=["null", "string"], pattern=MONEY_PATTERN,
        title="Alert when drift found is above",
        description="Send an alert when the total absolute drift found exceeds this amount (empty: never; "
                    "halted and failed runs always alert).",
        section="Alerts"),
}


def _run_options(params: dict[str, Any]) -> Any:
    """RunOptions from the DAG params (an emptied form field counts as not given); a contract error fails the
    task at once (retrying cannot help)."""
    from reconciler.errors import ReconcilerError
    from reconciler.pipeline import RunOptions

    given = {name: params.get(name) for name in RUN_OPTION_PARAMS}
    given = {name: None if value in ("", []) else value for name, value in given.items()}
    try:
        return RunOptions.from_params(given)
    except ReconcilerError as exc:
        raise AirflowFailException(f"invalid run options: {type(exc).__name__}: {exc}") from None


@dag(
    schedule=schedule_from_env("RECONCILER_SCHEDULE", DEFAULT_SCHEDULE),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["reconciler", "finance", "ledger"],
    params=PARAMS,
    default_args={
        "owner": "finance-engineering",
        "retries": TASK_RETRIES,
        "retry_delay": RETRY_DELAY,
        "retry_exponential_backoff": 2.0,  # a multiplier: 30 s, 60 s, 120 s ... up to max_retry_delay
        "max_retry_delay": dt.timedelta(minutes=10),
        # Only bookkeeping per failed task; the one alert of the DAG run comes from send_alerts.
        "on_failure_callback": [mark_run_failed],
    },
)
def ledger_reconciliation() -> None:
    @task
    def start_run() -> int:
        """Record a new run with its options and trigger; return its id (also marks dead runs failed)."""
        import dataclasses

        from reconciler import change_feed, pipeline
        from reconciler.errors import ReconcilerError

        context = get_current_context()
        options = _run_options(dict(context["params"]))
        dag_run = context["dag_run"]
        trigger = trigger_of(dag_run.run_type)
        try:
            mode, sweep_days = change_feed.requested_mode(context["params"].get("mode"), trigger)
        except ReconcilerError as exc:
            raise AirflowFailException(f"invalid mode: {exc}") from None
        options = dataclasses.replace(options, mode=mode, full_sweep_days=sweep_days)
        with ledger_step() as engine:
            # Keyed by the Airflow run: a retry of this task returns the run it already started.
            run = pipeline.start_run(engine, options, trigger, key=f"airflow:{dag_run.dag_id}:{dag_run.run_id}")
            from reconciler.approvals import record_trigger_user

            record_trigger_user(engine, run, trigger_user(context))  # the proposer, for the four-eyes rule
            return run

    @task
    def plan_chunks(run: int) -> list[dict[str, int]]:
        """Split the customers into chunks (stored in run_chunks); return their ids and bounds only."""
        from reconciler import pipeline

        with ledger_step() as engine, replica_engine() as replica:
            return pipeline.plan_run(engine, run, read_engine=replica)

    @task(pool=LEDGER_POOL, retries=max(TASK_RETRIES, 3), execution_timeout=dt.timedelta(minutes=30),
          map_index_template="{{ chunk_label }}", inlets=LEDGER_INPUTS)
    def compare_chunk(chunk: dict[str, int]) -> dict[str, int]:
        """Compare one chunk in one statement; findings are staged, so a retry changes nothing."""
        from reconciler import pipeline

        get_current_context()["chunk_label"] = (  # type: ignore[typeddict-unknown-key]
            f"chunk {chunk['chunk_index']}: ids {chunk['first_id']}..{chunk['last_id']}")
        with ledger_step() as engine, replica_engine() as replica:
            return pipeline.compare_run_chunk(engine, chunk["run_id"], chunk["chunk_index"], read_engine=replica)

    @task(trigger_rule="none_failed")
    def check_quality(run: int) -> dict[str, Any]:
        """Run the data-quality expectations on the run's findings (also when there were no chunks)."""
        from reconciler import pipeline

        with ledger_step() as engine, replica_engine() as replica:
            return jsonable(pipeline.check_quality(engine, run, read_engine=replica))

    @task
    def open_tasks(run: int) -> dict[str, int]:
        """Open (or refresh) one reconciliation task per drifting customer; a rerun opens no duplicates."""
        from reconciler import pipeline

        with ledger_step() as engine:
            return pipeline.open_run_tasks(engine, run)

    @task
    def apply_corrections(run: int) -> dict[str, Any]:
        """Correct open tasks through the balance core within the guardrails (or halt, or dry-run)."""
        from reconciler import pipeline

        with ledger_step() as engine:
            return jsonable(pipeline.apply_run_corrections(engine, run))

    @task(trigger_rule="none_failed")
    def apply_review(run: int) -> dict[str, Any] | None:
        """Apply the approver's answer (skipped review: nothing to do): approved tasks are corrected through
        the core with the approver in their audit; rejected ones stay in review with the note; no answer in
        time, or an answer by the run's own trigger, corrects nothing."""
        from reconciler import approvals
        from reconciler.errors import FourEyesError

        context = get_current_context()
        response = context["ti"].xcom_pull(task_ids="review_corrections")
        if not response:
            return None
        with ledger_step() as engine:
            pending = [t.id for t in approvals.review_candidates(engine, run)]
            if not response.get("responded_by_user"):
                outcome = approvals.record_review_timeout(engine, run, waited=str(APPROVAL_TIMEOUT))
            else:
                decision = decision_from(response, pending)
                try:
                    outcome = approvals.apply_review(engine, run, decision, proposers=[trigger_user(context)],
                                                     approvers=configured_approvers(),
                                                     policy=str(context["params"].get("policy") or "ledger"))
                except FourEyesError as exc:
                    log.warning("approval refused: %s", exc)
                    outcome = approvals.record_review_refused(engine, run, decision, str(exc))
        return outcome.to_json()

    @task(outlets=[BALANCES])
    def build_report(run: int) -> str:
        """Write the finance report for the run; return where it is. Emits the "balances reconciled" asset
        event with the run's figures and the report's location."""
        from reconciler import pipeline

        with ledger_step() as engine, replica_engine() as replica:
            location = str(pipeline.build_report(engine, run, read_engine=replica))
            summary = pipeline.load_summary(engine, run)
        get_current_context()["outlet_events"][BALANCES].extra = balances_event(summary, location)
        return location

    @task
    def finish_run(run: int) -> dict[str, Any]:
        """Close the run (succeeded or halted) and return its summary (counts and amounts as strings)."""
        from reconciler import pipeline

        with ledger_step() as engine:
            return jsonable(pipeline.finish_run(engine, run).to_json())

    @task(trigger_rule="all_done", retries=0)
    def send_alerts() -> str | None:
        """Send this DAG run's metrics and its one alert (halted, failed, drift above the threshold), whatever
        failed before; a halted or failed run turns the DAG red."""
        from dataclasses import replace

        from reconciler import alerts, pipeline

        context = get_current_context()
        failed = failed_task_instances(context)
        where = ", ".join(f"{task}[{index}]" if index >= 0 else task for task, index in failed)
        run = run_id_of(context)
        if run is None:
            alert = alerts.alert_for_failure(run_id=None, where=where or "start_run",
                                             error="the run could not be recorded; see the task log")
            deliver_alert(alert.with_links(**links_for(context, failed=failed)), context, log)
            raise RunNotClean(f"{alert.subject}: {alert.text}")
        with ledger_step() as engine:
            summary = pipeline.load_summary(engine, run)
            if failed and summary.status not in ("failed", "halted"):
                # The failure callbacks record the reason; a task failing after finish_run (or a callback not
                # yet done) still makes this a failed DAG run, and the alert says so.
                reason = summary.error or f"{where} failed; see the task log"
                pipeline.mark_run_failed(engine, run, reason)
                summary = replace(pipeline.load_summary(engine, run), status="failed", error=reason)
        started = context["dag_run"].start_date
        emit_run_metrics(summary, (dt.datetime.now(dt.UTC) - started).total_seconds() if started else None)
        threshold = alerts.parse_drift_threshold(context["params"].get("alert_drift_above"))
        reviewed = context["ti"].xcom_pull(task_ids="apply_review")
        review = alerts.ReviewOutcome(**reviewed) if reviewed else None
        outcome = alerts.alert_for_summary(summary, drift_above=threshold, review=review)
        if outcome is not None:
            deliver_alert(outcome.with_links(**links_for(context, failed=failed, report=summary.report_path)),
                          context, log)
        if summary.status in ("halted", "failed"):
            raise RunNotClean(f"{outcome.subject}: {outcome.text}" if outcome else f"run {run} is {summary.status}")
        return outcome.kind if outcome else None

    # ``run`` is the reconciler run id (an XComArg here, an int inside the tasks; Airflow reserves "run_id").
    run: Any = start_run()
    compared = compare_chunk.expand(chunk=plan_chunks(run))
    # The report is built after the run is finished, so it shows the run's final status.
    review = FourEyesReview(task_id="review_corrections", response_timeout=APPROVAL_TIMEOUT, retries=0)
    chain(compared, check_quality(run), open_tasks(run), apply_corrections(run), review, apply_review(run),
          finish_run(run), build_report(run), send_alerts())


ledger_reconciliation()
