# The local cluster's settings; `source cluster/env.sh` to use it from a shell (PATH with .venv, job API, MLflow).
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export VENV="${VENV:-$ROOT/.venv}"
export PATH="$VENV/bin:$PATH"
# Read by `orchestrator cluster up/down/status` too:
export ORCHESTRATOR_STATE_DIR="${ORCHESTRATOR_STATE_DIR:-$ROOT/.cluster}"   # MLflow store, artifacts, pid and log files
export MLFLOW_PORT="${MLFLOW_PORT:-5000}"
export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-http://127.0.0.1:$MLFLOW_PORT}"
export RAY_DASHBOARD_PORT="${RAY_DASHBOARD_PORT:-8265}"
export RAY_ADDRESS_HTTP="http://127.0.0.1:$RAY_DASHBOARD_PORT"
# Ray 2.60 clusters require token auth; clients (ray job submit, drivers) must say they use it.
export RAY_AUTH_MODE=token
# The local head is one loopback node: all it starts listens on 127.0.0.1, and its clients (ray status, drivers) must
# look for it there (orchestrator/cli/cluster.py LOOPBACK_NODE). Not for a node that joins another cluster.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
