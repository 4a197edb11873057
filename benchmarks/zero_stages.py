"""Submits the example job once per ZeRO stage to the local cluster (`bash cluster/up.sh` first) and prints,
per stage: seconds from `ray job submit` to the first optimizer step, and steady training tokens/s.

Usage: .venv/bin/python benchmarks/zero_stages.py [JOB] [--steps N]
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import time

from mlflow.tracking import MlflowClient

parser = argparse.ArgumentParser()
parser.add_argument("job", nargs="?", default="jobs/gpt-tiny.yaml")
parser.add_argument("--steps", type=int, default=100)
parser.add_argument("--stages", default="0,1,2,3")
args = parser.parse_args()

dashboard = f"http://127.0.0.1:{os.environ.get('RAY_DASHBOARD_PORT', '8265')}"
client = MlflowClient(os.environ.get("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000"))
env = os.environ | {"RAY_AUTH_MODE": "token"}
rows = []
for stage in map(int, args.stages.split(",")):
    command = ["ray", "job", "submit", "--address", dashboard, "--working-dir", ".", "--", "python", "-m"]
    command += ["orchestrator", "train", args.job, "--set", f"deepspeed.zero_stage={stage}"]
    command += ["--set", f"train.max_steps={args.steps}", "--set", "tracking.experiment=benchmark-zero-stages"]
    submitted = time.monotonic()
    first_step_s, run_id = None, None
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as job:
        for line in job.stdout:
            if first_step_s is None and "first optimizer step done" in line:
                first_step_s = time.monotonic() - submitted
            if match := re.search(r"MLflow run \((?:new|resumed)\): \S*/runs/([0-9a-f]+)", line):
                run_id = match.group(1)
    if job.returncode != 0 or run_id is None:
        raise SystemExit(f"zero_stage={stage}: the job failed")
    tokens_per_s = [m.value for m in client.get_metric_history(run_id, "train/tokens_per_s")][2:]  # after warm-up
    rows.append({"zero_stage": stage, "submit_to_first_step_s": round(first_step_s, 1),
                 "steady_tokens_per_s": round(statistics.median(tokens_per_s)), "mlflow_run": run_id})

print("| ZeRO stage | submit -> first step (s) | steady tokens/s |\n|---|---|---|")
for row in rows:
    print(f"| {row['zero_stage']} | {row['submit_to_first_step_s']} | {row['steady_tokens_per_s']:,} |")
print(json.dumps(rows))
