#!/usr/bin/env bash
# `make airflow`: Airflow's UI and scheduler for this checkout (`airflow standalone`), with the
# ledger_reconciliation DAG, on the embedded PostgreSQL. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/airflow-env.sh
source scripts/airflow-env.sh

PORT="${AIRFLOW_PORT:-8080}"
export AIRFLOW__API__PORT="$PORT"
export AIRFLOW__API__BASE_URL="${AIRFLOW__API__BASE_URL:-http://localhost:$PORT}"
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="${AIRFLOW__CORE__EXECUTION_API_SERVER_URL:-http://localhost:$PORT/execution/}"
export AIRFLOW__CORE__AUTH_MANAGER="airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS:-admin:admin}"
passwords="$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated"
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE="$passwords"
if [[ ! -s "$passwords" ]]; then
    python -c 'import json, secrets, sys; json.dump({"admin": secrets.token_urlsafe(12)}, open(sys.argv[1], "w"))' "$passwords"
    chmod 600 "$passwords"
fi
password="$(python -c 'import json, sys; print(json.load(open(sys.argv[1]))["admin"])' "$passwords")"

cat <<MSG

  Airflow UI:  $AIRFLOW__API__BASE_URL
  login:       admin / $password
  DAGs:        ledger_reconciliation (nightly 02:00 UTC, or Trigger with Params), ledger_reconciliation_watchdog
  Ctrl-C stops Airflow; the embedded PostgreSQL keeps running (make stop stops it).

MSG
# standalone runs in its own process group (job control on), so that Ctrl-C here stops all of its components
# with SIGTERM: on SIGINT standalone itself can hang waiting for output pipes its components still hold.
set -m
airflow standalone &
standalone=$!
echo "$standalone" >"$AIRFLOW_HOME/standalone.pid"
stop() {
    trap - INT TERM
    kill -TERM -- "-$standalone" 2>/dev/null || true
    wait "$standalone" 2>/dev/null || true
    # the components shut down on their own after SIGTERM; give them 30 s, then end whatever is left
    for _ in $(seq 150); do kill -0 -- "-$standalone" 2>/dev/null || return 0; sleep 0.2; done
    kill -KILL -- "-$standalone" 2>/dev/null || true
}
trap stop INT TERM
wait "$standalone" || true
stop
