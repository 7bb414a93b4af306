# Source me (bash): Airflow for this checkout, on the embedded PostgreSQL, with the repo's dags/ folder.
#
#   source scripts/airflow-env.sh && airflow dags list
#
# Everything lives under .reconciler/ (RECONCILER_HOME): the embedded PostgreSQL (pgdata/: the ledger in
# database `ledger`, Airflow's metadata in database `airflow`) and AIRFLOW_HOME (airflow/). Settings already
# in the environment win. The DAG finds the ledger through the Airflow connection `ledger_db` if you define
# one (e.g. AIRFLOW_CONN_LEDGER_DB), else RECONCILER_DATABASE_URL, else the embedded database.

_reconciler_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export RECONCILER_HOME="${RECONCILER_HOME:-$_reconciler_repo/.reconciler}"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$RECONCILER_HOME/airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="${AIRFLOW__CORE__DAGS_FOLDER:-$_reconciler_repo/dags}"
export AIRFLOW__CORE__LOAD_EXAMPLES="${AIRFLOW__CORE__LOAD_EXAMPLES:-False}"
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="${AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION:-False}"
# Small machines: a few tasks at a time; the pool `ledger_db` caps the compare tasks on the ledger.
export AIRFLOW__CORE__PARALLELISM="${AIRFLOW__CORE__PARALLELISM:-4}"
export AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG="${AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG:-4}"
export AIRFLOW__SCHEDULER__PARSING_PROCESSES="${AIRFLOW__SCHEDULER__PARSING_PROCESSES:-1}"
export AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES="${AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES:-1}"
export RECONCILER_POOL_SLOTS="${RECONCILER_POOL_SLOTS:-4}"
export PATH="$_reconciler_repo/.venv/bin:$PATH"
# pgserver wants a private runtime folder (mode 0700) before it is imported.
mkdir -p "$RECONCILER_HOME/run" && chmod 700 "$RECONCILER_HOME/run"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$RECONCILER_HOME/run}"

# Starts the embedded PostgreSQL, migrates Airflow's database and creates the pool on first use.
_reconciler_exports="$(AIRFLOW__LOGGING__LOGGING_LEVEL=WARNING \
    "$_reconciler_repo/.venv/bin/python" "$_reconciler_repo/scripts/airflow_setup.py")" || {
    echo "scripts/airflow-env.sh: could not prepare Airflow's metadata database (see above)" >&2
    return 1 2>/dev/null || exit 1
}
eval "$_reconciler_exports"
unset _reconciler_exports _reconciler_repo
