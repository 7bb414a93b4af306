#!/usr/bin/env bash
# `make demo`: a real Airflow run of the ledger_reconciliation DAG on demo data with planted drift.
#
# 1. the embedded PostgreSQL (.reconciler/pgdata): database `ledger`, and Airflow's metadata in `airflow`;
# 2. migrations of both (Airflow's only on first use);
# 3. demo data: DEMO_CUSTOMERS customers (default 20000) with planted drift, seeded once (RESEED=1 to redo);
# 4. the guard on (`reconciler guard observe`), then two fake services (legacy-billing, support-tool: plain
#    psycopg) write around the balance core; `reconciler writers` names them;
# 5. `airflow dags test ledger_reconciliation`: one DAG run, one mapped compare_chunk task per chunk;
# 6. the run's summary, its explained drifts, the writers around the core and where the report is;
# 7. the two fake services write again, and `reconciler run --incremental` checks only the customers touched
#    since the DAG run's verified point (the services' customers and the run's own corrections).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS

CUSTOMERS="${DEMO_CUSTOMERS:-20000}"
ENTRIES="${DEMO_ENTRIES_PER_CUSTOMER:-10}"
DRIFT_RATE="${DEMO_DRIFT_RATE:-0.01}"
CHUNK_SIZE="${DEMO_CHUNK_SIZE:-5000}"

if [[ -t 1 ]]; then bold=$'\033[1m' plain=$'\033[0m'; else bold="" plain=""; fi
step() { printf '\n%s==> %s%s\n' "$bold" "$*" "$plain"; }

step "Embedded PostgreSQL and Airflow's metadata database (under .reconciler/)"
# shellcheck source=scripts/airflow-env.sh
source scripts/airflow-env.sh
echo "AIRFLOW_HOME=$AIRFLOW_HOME  dags: $AIRFLOW__CORE__DAGS_FOLDER"

step "Ledger schema"
reconciler db upgrade

if [[ -z "${RESEED:-}" ]] && reconciler demo planted --first >/dev/null 2>&1; then
    step "Demo data already seeded (RESEED=1 make demo starts over)"
else
    step "Seeding $CUSTOMERS customers x $ENTRIES entries, drift planted in ${DRIFT_RATE} of them"
    reconciler guard off >/dev/null  # the seed itself writes around the core, on purpose
    reconciler demo seed --customers "$CUSTOMERS" --entries-per-customer "$ENTRIES" --drift-rate "$DRIFT_RATE" \
        --seed 42 --reset
fi

step "The guard: reconciler guard observe (the database records every write around the balance core)"
reconciler guard observe

step "Two fake services write around the core (plain psycopg, their own application_name)"
python scripts/demo_writers.py
echo
reconciler writers --since "$(date -u -d '-2 minutes' +%Y-%m-%dT%H:%M:%SZ)"

step "Airflow: airflow dags test ledger_reconciliation (chunk_size $CHUNK_SIZE: one mapped compare_chunk per chunk)"
log="$AIRFLOW_HOME/demo-dags-test.log"
dag_started=$SECONDS
# Nobody is there to answer the four-eyes step in a demo: it is skipped, reviews go through the CLI.
export RECONCILER_REVIEW="${RECONCILER_REVIEW:-off}"
if ! airflow dags test ledger_reconciliation -c "{\"chunk_size\": $CHUNK_SIZE}" >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "the DAG run failed; the whole Airflow log is $log" >&2
    exit 1
fi
# The task instances as Airflow finished them (task, map index, state), from the run's own log.
grep -E "Task instance in (success|failure) state|\\[DAG TEST\\] end task" "$log" \
    | sed -E 's/.*task_id=([a-z_]+).*map_index=(-?[0-9]+).*/  \1 \2/' | awk '
        { label = ($2 == "-1") ? $1 : $1 "[" $2 "]"; if (!seen[label]++) printf "  done: %s\n", label }' || true
echo "DAG run finished in $((SECONDS - dag_started)) s; Airflow's log: $log"

step "What the run did"
status=0
python scripts/demo_summary.py || status=$?

step "The two fake services write again; an incremental run checks only the customers touched since"
python scripts/demo_writers.py
inc_status=0
reconciler run --incremental --json >"$AIRFLOW_HOME/demo-incremental.json" || inc_status=$?
python - "$AIRFLOW_HOME/demo-incremental.json" <<'PY'
import json, sys
run = json.load(open(sys.argv[1]))
scope = run.get("scope", {})
print(f"  run {run['run_id']} {run['status']}: mode {run['mode']} ({run['mode_reason']})")
print(f"  customers checked: {run['customers_checked']} (touched since the last verified point: "
      f"{scope.get('touched', '?')}, with unresolved tasks: {scope.get('with_unresolved_tasks', 0)}); "
      f"drifting: {run['drift_count']}, corrected: {run['corrected']}")
print(f"  verified point: from {run['verified_from']} to {run['verified_to']}")
PY
if [[ "$inc_status" -gt 1 ]]; then status=$inc_status; fi

echo
echo "The UI with this DAG: make airflow      Total: $((SECONDS - started)) s"
exit "$status"
