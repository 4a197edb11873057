# Settings shared by the cluster scripts; `source cluster/env.sh` to use the local cluster from a shell.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export VENV="${VENV:-$ROOT/.venv}"
export PATH="$VENV/bin:$PATH"
export STATE_DIR="${STATE_DIR:-$ROOT/.cluster}"          # MLflow store, artifacts, pid and log files
export MLFLOW_PORT="${MLFLOW_PORT:-5000}"
export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-http://127.0.0.1:$MLFLOW_PORT}"
export RAY_DASHBOARD_PORT="${RAY_DASHBOARD_PORT:-8265}"
export RAY_ADDRESS_HTTP="http://127.0.0.1:$RAY_DASHBOARD_PORT"
# Ray 2.60 clusters require token auth; clients (ray job submit, drivers) must say they use it.
export RAY_AUTH_MODE=token
