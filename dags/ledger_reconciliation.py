"""
# Ledger reconciliation

Finds every customer whose cached balance (`customers.balance`) drifted from the ledger
(`SUM(customer_ledger_entries.amount)`), explains it, opens a task for it and corrects it through the
balance core. Nightly at 02:00 UTC (`RECONCILER_SCHEDULE`), and by hand after an incident with the
settings below (a customer range or ids, tolerance, policy, guardrails, dry run).

**Steps** (each calls one `reconciler.pipeline` function; every step can be retried or rerun and
changes nothing the second time; findings are staged in `reconciler.findings` before anything acts):
`start_run` → `plan_chunks` → `compare_chunk` (one mapped task per chunk of customer ids, in pool
`ledger_db`) → `check_quality` → `open_tasks` → `apply_corrections` → `finish_run` → `build_report`
→ `send_alerts`.

**Database**: the Airflow connection `ledger_db`, else `RECONCILER_DATABASE_URL`, else the embedded
PostgreSQL under `.reconciler/`. When the connection `ledger_db_replica` (else `RECONCILER_READ_DATABASE_URL`)
exists, every read-only step reads from it: comparisons, explanations, quality checks, the report (corrections
always re-verify on the primary). Read-only steps run in READ ONLY transactions either way.

**Alerts**: a halted or failed run, or drift found above `alert_drift_above`, goes to the task log and to
the Airflow connection `reconciler_alerts` (webhook or SMTP) when it exists. A failing task marks the run
`failed`. The `ledger_reconciliation_watchdog` DAG alerts when no run has succeeded for 26 hours.

**Results**: `reconciler tasks list --run RUN_ID`, the report folder printed by `build_report`.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

import pendulum
from airflow.sdk import Param, chain, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException
from reconciler_airflow import (
    LEDGER_POOL,
    RunNotClean,
    env_int,
    jsonable,
    ledger_step,
    mark_run_failed,
    replica_engine,
    schedule_from_env,
    trigger_of,
)
from reconciler_alerts import ReconcilerNotifier

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

DEFAULT_SCHEDULE = "0 2 * * *"
TASK_RETRIES = env_int("RECONCILER_TASK_RETRIES", 2)
RETRY_DELAY = dt.timedelta(seconds=env_int("RECONCILER_RETRY_DELAY_SECONDS", 30))
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
        "retry_exponential_backoff": True,
        "max_retry_delay": dt.timedelta(minutes=10),
        "on_failure_callback": [mark_run_failed, ReconcilerNotifier()],
    },
)
def ledger_reconciliation() -> None:
    @task
    def start_run() -> int:
        """Record a new run with its options and trigger; return its id (also marks dead runs failed)."""
        from reconciler import pipeline

        context = get_current_context()
        options = _run_options(dict(context["params"]))
        with ledger_step() as engine:
            dag_run = context["dag_run"]
            # Keyed by the Airflow run: a retry of this task returns the run it already started.
            return pipeline.start_run(engine, options, trigger_of(dag_run.run_type),
                                      key=f"airflow:{dag_run.dag_id}:{dag_run.run_id}")

    @task
    def plan_chunks(run: int) -> list[dict[str, int]]:
        """Split the customers into chunks (stored in run_chunks); return their ids and bounds only."""
        from reconciler import pipeline

        with ledger_step() as engine:
            return pipeline.plan_run(engine, run)

    @task(pool=LEDGER_POOL, retries=max(TASK_RETRIES, 3), execution_timeout=dt.timedelta(minutes=30),
          map_index_template="{{ chunk_label }}")
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

    @task
    def build_report(run: int) -> str:
        """Write the finance report for the run; return where it is."""
        from reconciler import pipeline

        with ledger_step() as engine, replica_engine() as replica:
            return str(pipeline.build_report(engine, run, read_engine=replica))

    @task
    def finish_run(run: int) -> dict[str, Any]:
        """Close the run (succeeded or halted) and return its summary (counts and amounts as strings)."""
        from reconciler import pipeline

        with ledger_step() as engine:
            return jsonable(pipeline.finish_run(engine, run).to_json())

    @task
    def send_alerts(run: int) -> str | None:
        """Alert on a halted or failed run or on drift above the threshold; a halted run turns the DAG red."""
        from reconciler import alerts, pipeline

        context = get_current_context()
        with ledger_step() as engine:
            summary = pipeline.load_summary(engine, run)
        threshold = alerts.parse_drift_threshold(context["params"].get("alert_drift_above"))
        alert = alerts.alert_for_summary(summary, drift_above=threshold)
        if alert is None:
            return None
        ReconcilerNotifier(alert).notify(context)
        if summary.status in ("halted", "failed"):
            raise RunNotClean(f"{alert.subject}: {alert.text}")
        return alert.kind

    # ``run`` is the reconciler run id (an XComArg here, an int inside the tasks; Airflow reserves "run_id").
    run: Any = start_run()
    compared = compare_chunk.expand(chunk=plan_chunks(run))
    # The report is built after the run is finished, so it shows the run's final status.
    chain(compared, check_quality(run), open_tasks(run), apply_corrections(run), finish_run(run), build_report(run),
          send_alerts(run))


ledger_reconciliation()
