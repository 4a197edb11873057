#!/usr/bin/env bash
# Stops the local Ray head and MLflow server started by up.sh.
set -uo pipefail
source "$(dirname "$0")/env.sh"
ray stop >/dev/null 2>&1 && echo "Ray stopped"
if [ -f "$STATE_DIR/mlflow.pid" ]; then
  pkill -TERM -P "$(cat "$STATE_DIR/mlflow.pid")" 2>/dev/null
  kill "$(cat "$STATE_DIR/mlflow.pid")" 2>/dev/null && echo "MLflow stopped"
  rm -f "$STATE_DIR/mlflow.pid"
fi
