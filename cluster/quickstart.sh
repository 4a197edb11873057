#!/usr/bin/env bash
# README command 1: install, start the local cluster, submit the example job with `ray job submit`, wait,
# and print the job's MLflow run. Stop the cluster afterwards with: .venv/bin/orchestrator cluster down
set -euo pipefail
cd "$(dirname "$0")/.."
bash cluster/install.sh
source cluster/env.sh
orchestrator cluster up

JOB="${1:-jobs/gpt-tiny.yaml}"
python -m orchestrator validate "$JOB"
ray job submit --address "$RAY_ADDRESS_HTTP" --working-dir . -- python -m orchestrator train "$JOB" \
  | tee "$ORCHESTRATOR_STATE_DIR/last-job.log"
echo
grep -m1 -o "MLflow run: .*" "$ORCHESTRATOR_STATE_DIR/last-job.log" || true
echo "Ray dashboard: $RAY_ADDRESS_HTTP   MLflow: $MLFLOW_TRACKING_URI   (stop both: orchestrator cluster down)"
