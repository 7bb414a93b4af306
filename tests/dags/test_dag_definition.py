"""The DAG files as the DAG processor sees them: they parse cleanly and cheaply, touch no database and look up
no connection at parse time, and the DAG is configured as DESIGN.md and STYLE.md ask (schedule, Params,
mapped compare in a pool, retries, failure callbacks)."""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
DAGS_FOLDER = HERE.parents[1] / "dags"
UNREACHABLE = "postgresql://nobody:secret@127.0.0.1:1/nowhere"
#: What the DAG file may import of the library at parse time: the Params' bounds and their vocabulary.
LIGHT_LIBRARY_MODULES = ("reconciler", "reconciler.run_limits", "reconciler.money", "reconciler.vocabulary",
                         "reconciler.errors")
HEAVY_MODULES = ("great_expectations", "matplotlib", "pgserver", "psycopg", "jinja2.sandbox")


def _validated(dag: Any, conf: dict[str, object]) -> dict[str, Any]:
    """The DAG's params with ``conf`` applied and validated, as a trigger does."""
    params = copy.deepcopy(dag.params)
    for name, value in conf.items():
        params[name] = value
    validated: dict[str, Any] = params.validate()
    return validated


def _probe(tmp_path: Path) -> dict[str, Any]:
    """Parse dags/ in a fresh interpreter (with every database pointed at a closed port) and report."""
    environment = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": UNREACHABLE.replace("postgresql:", "postgresql+psycopg:"),
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "ERROR",
        "RECONCILER_DATABASE_URL": UNREACHABLE,
        "AIRFLOW_CONN_LEDGER_DB": UNREACHABLE,
    }
    result = subprocess.run([sys.executable, str(HERE / "parse_probe.py"), str(DAGS_FOLDER)], env=environment,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


def test_dag_files_parse_without_databases_connections_or_heavy_imports(tmp_path: Path) -> None:
    """The DAGs (and the example consumer) load with no import error while every database is unreachable;
    parsing opens no socket, looks up no connection or variable, imports of reconciler only the light modules
    holding the Params' bounds (no engine, no database module) and nothing heavy. How long it takes is a figure
    of `make bench` (bench/dags.py), not an assertion: wall clock on a shared machine is not a correctness
    property."""
    report = _probe(tmp_path)
    assert report["import_errors"] == {}
    assert report["dag_ids"] == ["finance_export", "ledger_reconciliation", "ledger_reconciliation_watchdog"]
    assert report["events"] == [] and report["lookups"] == []
    touched = [name for name in report["new_modules"]
               if (name == "reconciler" or name.startswith("reconciler.") or name.startswith(HEAVY_MODULES))
               and name not in LIGHT_LIBRARY_MODULES]
    assert touched == []


def test_schedule_is_configurable_by_environment(dagbag: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """RECONCILER_SCHEDULE sets another cron (still UTC) and "none" makes a manual-only DAG; no import errors."""
    from airflow.dag_processing.dagbag import BundleDagBag

    def parse() -> Any:
        bag = BundleDagBag(dag_folder=DAGS_FOLDER, bundle_path=DAGS_FOLDER, bundle_name="dags-folder")
        assert bag.import_errors == {}
        return bag.dags

    monkeypatch.setenv("RECONCILER_SCHEDULE", "30 3 * * 1-5")
    assert parse()["ledger_reconciliation"].timetable.expression == "30 3 * * 1-5"
    monkeypatch.setenv("RECONCILER_SCHEDULE", "none")
    monkeypatch.setenv("RECONCILER_WATCHDOG_SCHEDULE", "none")
    dags = parse()
    assert type(dags["ledger_reconciliation"].timetable).__name__ == "NullTimetable"
    assert type(dags["ledger_reconciliation_watchdog"].timetable).__name__ == "NullTimetable"


def test_reconciliation_dag_is_configured_as_agreed(dagbag: Any) -> None:
    """Nightly 02:00 UTC cron, fixed aware start date, no catchup, one active run, docs, tags, verb-named tasks."""
    assert dagbag.import_errors == {}
    dag = dagbag.dags["ledger_reconciliation"]
    assert dag.timetable.expression == "0 2 * * *" and str(dag.timetable.timezone) == "UTC"
    assert dag.start_date.tzinfo is not None and dag.start_date < dt.datetime(2026, 11, 26, tzinfo=dt.UTC)
    assert dag.catchup is False and dag.max_active_runs == 1
    assert dag.doc_md and "Ledger reconciliation" in dag.doc_md
    assert {"reconciler", "finance"} <= set(dag.tags)
    assert [t.task_id for t in dag.topological_sort()] == [
        "start_run", "plan_chunks", "compare_chunk", "check_quality", "open_tasks", "apply_corrections",
        "review_corrections", "apply_review", "finish_run", "build_report", "send_alerts"]


def test_compare_is_mapped_in_the_ledger_pool_with_backoff(dagbag: Any) -> None:
    """compare_chunk expands over the plan, runs in pool ledger_db, retries with exponential backoff."""
    dag = dagbag.dags["ledger_reconciliation"]
    compare = dag.get_task("compare_chunk")
    assert type(compare).__name__.endswith("MappedOperator")
    assert compare.pool == "ledger_db" and compare.retries >= 3
    assert compare.partial_kwargs.get("retry_exponential_backoff", compare.retry_exponential_backoff) == 2.0
    assert dag.get_task("check_quality").trigger_rule == "none_failed"


def test_failures_mark_the_run_failed_and_alert_once_per_dag_run(dagbag: Any) -> None:
    """Every task of the reconciliation DAG marks the run failed when it fails, but none alerts on its own: the
    last task, send_alerts, runs whatever happened (all_done, no retry) and alerts once per DAG run. The
    watchdog (one task) alerts from its failure callback."""
    dag = dagbag.dags["ledger_reconciliation"]
    for task in dag.tasks:
        callbacks = task.on_failure_callback
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        names = {getattr(cb, "__name__", type(cb).__name__) for cb in callbacks}
        assert names == {"mark_run_failed"}, task.task_id
    alerts = dag.get_task("send_alerts")
    assert alerts.trigger_rule == "all_done" and alerts.retries == 0
    assert [t.task_id for t in dag.tasks if not t.downstream_list] == ["send_alerts"]
    for task in dagbag.dags["ledger_reconciliation_watchdog"].tasks:
        callbacks = task.on_failure_callback
        assert {type(cb).__name__ for cb in (callbacks if isinstance(callbacks, list) else [callbacks])} == {
            "ReconcilerNotifier"}


def test_params_are_typed_and_documented(dagbag: Any) -> None:
    """Every run option of DESIGN.md is a Param with a type, a title and a description."""
    params = dagbag.dags["ledger_reconciliation"].params
    expected = {"tolerance", "chunk_size", "from_id", "to_id", "customer_ids", "policy", "auto_correct",
                "auto_correct_limit", "max_drift_ratio", "dry_run", "alert_drift_above", "mode"}
    assert set(params.keys()) == expected
    for name in expected:
        param = params.get_param(name)
        assert param.schema.get("type") and param.schema.get("title") and param.description, name
    assert params.get_param("policy").schema["enum"] == ["ledger", "balance"]
    assert params.get_param("chunk_size").schema["minimum"] == 1
    from reconciler.run_limits import MAX_CHUNK_SIZE

    assert params.get_param("chunk_size").schema["maximum"] == MAX_CHUNK_SIZE == 10_000_000  # the library's bound


def test_param_defaults_are_the_pipeline_defaults(dagbag: Any) -> None:
    """A nightly run with default Params runs with RunOptions' defaults (one source of truth, checked)."""
    from reconciler.pipeline import RunOptions

    params = dagbag.dags["ledger_reconciliation"].params.validate()
    defaults = RunOptions().to_params()
    defaults.pop("workers")
    # mode is decided by the trigger when the Param is empty (scheduled: incremental, manual: full)
    assert params["mode"] is None and defaults.pop("mode") == "full" and defaults.pop("full_sweep_days") is None
    assert {name: params[name] for name in defaults} == defaults
    assert RunOptions.from_params({name: params[name] for name in defaults}) == RunOptions()


@pytest.mark.parametrize("conf", [
    {"tolerance": "0.001"},
    {"tolerance": "-1"},
    {"tolerance": 0.01},
    {"chunk_size": 0},
    {"chunk_size": "100"},
    {"from_id": -5},
    {"customer_ids": [1, 1]},
    {"customer_ids": ["x"]},
    {"customer_ids": "1,2"},
    {"policy": "delete"},
    {"auto_correct": "yes"},
    {"auto_correct_limit": "1e3"},
    {"max_drift_ratio": "1.5"},
    {"max_drift_ratio": 0.5},
    {"dry_run": 1},
    {"alert_drift_above": "lots"},
], ids=lambda conf: "-".join(f"{k}={v}" for k, v in conf.items()))
def test_bad_params_are_rejected(dagbag: Any, conf: dict[str, object]) -> None:
    """A trigger conf breaking a Param's JSON schema is refused before any run starts."""
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError):
        _validated(dagbag.dags["ledger_reconciliation"], conf)


def test_incident_params_are_accepted(dagbag: Any) -> None:
    """A typical manual run after an incident (range, policy, guardrails, dry run) validates."""
    conf = {"from_id": 100, "to_id": 200, "tolerance": "0.00", "policy": "balance", "auto_correct_limit": "50",
            "max_drift_ratio": "1", "dry_run": True, "alert_drift_above": None, "chunk_size": 1}
    validated = _validated(dagbag.dags["ledger_reconciliation"], conf)
    assert {name: validated[name] for name in conf} == conf
    ids = _validated(dagbag.dags["ledger_reconciliation"], {"customer_ids": [3, 1, 2]})
    assert ids["customer_ids"] == [3, 1, 2]


def test_bad_conf_fails_a_real_trigger(dagbag: Any) -> None:
    """dag.test() with an invalid conf raises ParamValidationError and creates no run."""
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match="chunk_size"):
        dagbag.dags["ledger_reconciliation"].test(run_conf={"chunk_size": 0})


def test_watchdog_is_hourly_with_a_26_hour_default(dagbag: Any) -> None:
    """The watchdog runs every hour (UTC) and alerts past 26 hours by default."""
    dag = dagbag.dags["ledger_reconciliation_watchdog"]
    assert dag.timetable.expression == "17 * * * *" and dag.catchup is False
    assert dag.params.validate() == {"max_age_hours": 26}


def test_run_types_map_to_triggers(dagbag: Any) -> None:
    """Timetable runs (scheduled, backfill) record trigger 'scheduled'; everything else 'manual'."""
    from reconciler_airflow import trigger_of  # importable: the DAG bundle folder is on sys.path

    assert [trigger_of(t) for t in ("scheduled", "backfill", "manual", "asset_triggered", "operator_triggered")] == [
        "scheduled", "scheduled", "manual", "manual", "manual"]


def test_airflowignore_keeps_the_helper_modules_out_of_parsing(dagbag: Any) -> None:
    """dags/.airflowignore: the DAG processor lists the DAG files only, never the helper modules."""
    from airflow.utils.file import list_py_file_paths

    listed = sorted(Path(path).relative_to(DAGS_FOLDER).as_posix() for path in list_py_file_paths(DAGS_FOLDER))
    assert not [path for path in listed if Path(path).name.startswith("reconciler_")], listed
    assert {"ledger_reconciliation.py", "ledger_reconciliation_watchdog.py"} <= set(listed)


def test_runs_emit_balances_reconciled_and_the_example_consumes_it(dagbag: Any) -> None:
    """build_report has the asset reconciler://ledger/balances as outlet, compare_chunk reads the ledger's
    tables as inlets, and the example finance export is scheduled on that asset and
    picks the newest succeeded run's metadata from its triggering events."""
    dag = dagbag.dags["ledger_reconciliation"]
    assert [a.uri for a in dag.get_task("build_report").outlets] == ["reconciler://ledger/balances"]
    assert [a.uri for a in dag.get_task("compare_chunk").partial_kwargs.get("inlets", [])] == [
        "reconciler://ledger/customers", "reconciler://ledger/customer_ledger_entries"]
    consumer = dagbag.dags["finance_export"]
    assert [a.uri for a in consumer.timetable.asset_condition.objects] == ["reconciler://ledger/balances"]
    from examples.finance_export import latest_reconciled

    class Event:
        def __init__(self, **extra: object) -> None:
            self.extra = extra

    assert latest_reconciled([Event(run_id=1, status="succeeded"), Event(run_id=2, status="halted")]) == {
        "run_id": 1, "status": "succeeded"}
    assert latest_reconciled([Event(run_id=2, status="halted")]) is None


def test_openlineage_would_read_postgres_assets_but_not_ours(dagbag: Any) -> None:
    """What the README says about OpenLineage holds: the provider is not installed, and its extractor keeps only
    assets whose URI scheme has a converter registered by an installed provider: postgres:// has one (the
    postgres provider), the reconciler:// scheme of our inlets and outlets has none."""
    import importlib.util

    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    assert importlib.util.find_spec("airflow.providers.openlineage") is None
    converters = ProvidersManagerTaskRuntime().asset_to_openlineage_converters
    assert {"postgres", "postgresql"} <= set(converters)
    dag = dagbag.dags["ledger_reconciliation"]
    ours = [*dag.get_task("compare_chunk").partial_kwargs.get("inlets", []), *dag.get_task("build_report").outlets]
    assert ours and {a.uri.split("://", 1)[0] for a in ours} == {"reconciler"}
    assert "reconciler" not in converters


def test_review_step_is_a_hitl_operator_with_a_timeout(dagbag: Any) -> None:
    """review_corrections is the standard provider's HITL operator (approve all / selected / reject, Reject by
    default on timeout), with a response timeout and the two form fields; apply_review runs when it is
    skipped (no task awaiting review)."""
    from airflow.providers.standard.operators.hitl import HITLOperator

    dag = dagbag.dags["ledger_reconciliation"]
    review = dag.get_task("review_corrections")
    assert isinstance(review, HITLOperator)
    assert review.options == ["Approve all", "Approve selected", "Reject"] and review.defaults == ["Reject"]
    assert review.response_timeout == dt.timedelta(hours=12)
    assert set(review.params.keys()) == {"task_ids", "note"}
    assert dag.get_task("apply_review").trigger_rule == "none_failed"
