#!/usr/bin/env bash
# Starts a local MLflow tracking server and a Ray head, both on 127.0.0.1. Idempotent.
set -euo pipefail
source "$(dirname "$0")/env.sh"
mkdir -p "$STATE_DIR"

if curl -sf "$MLFLOW_TRACKING_URI/health" >/dev/null; then
  echo "MLflow already running"
else
  MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false nohup mlflow server \
    --backend-store-uri "sqlite:///$STATE_DIR/mlflow.db" --default-artifact-root "$STATE_DIR/mlartifacts" \
    --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 >"$STATE_DIR/mlflow.log" 2>&1 &
  echo $! >"$STATE_DIR/mlflow.pid"
  for _ in $(seq 60); do curl -sf "$MLFLOW_TRACKING_URI/health" >/dev/null && break; sleep 1; done
  curl -sf "$MLFLOW_TRACKING_URI/health" >/dev/null || { echo "MLflow did not start: $STATE_DIR/mlflow.log" >&2; exit 1; }
fi

if ray status >/dev/null 2>&1; then
  echo "Ray already running"
else
  ray get-auth-token --generate >/dev/null  # a new machine has no token yet; a token-auth head needs one
  # Jobs inherit this environment: MLFLOW_TRACKING_URI sends every job's run to the server above.
  ray start --head --dashboard-host 127.0.0.1 --dashboard-port "$RAY_DASHBOARD_PORT" \
    --disable-usage-stats >"$STATE_DIR/ray-start.log" 2>&1 || { cat "$STATE_DIR/ray-start.log" >&2; exit 1; }
fi

echo "Ray dashboard: $RAY_ADDRESS_HTTP"
echo "MLflow:        $MLFLOW_TRACKING_URI"
