"""A sweep in MLflow: one parent run, and a run per trial nested under it (the trials open their own runs).

When the sweep ends, the parent gets the results table, the comparison plots and the best trial, which is
tagged, and whose model is the sweep's output.
"""

import os
import re
import tempfile

import pandas as pd
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from ray import tune

from orchestrator.config.load import LoadedSweep, dump_yaml
from orchestrator.config.paths import path_inside
from orchestrator.config.redact import redact_config, redact_text
from orchestrator.tracking.model import ARTIFACT_PATH, register
from orchestrator.tracking.params import flatten
from orchestrator.tracking.plots import sweep_plots
from orchestrator.tracking.run import TrackedRun, job_tags, open_run, remembered_run_id, tracking_uri

TRIAL_ID_IN_PATH = re.compile(r"_([0-9a-f]{5}_[0-9]{5})_")  # Tune names trial directories {trainable}_{id}_{index}_...


def trial_run_dir(sweep_dir: str, trial_id: str) -> str:
    """Where a trial remembers its MLflow run, so a resumed or PBT-restarted trial logs into the same one. The id is
    Tune's; it is checked like any name that becomes a path."""
    return path_inside(f"{sweep_dir}/trial_runs", trial_id, "trial id")


def start_sweep_run(sweep: LoadedSweep, sweep_dir: str) -> TrackedRun:
    job = sweep.base_job
    return open_run(
        tracking_uri(job),
        job.tracking.experiment,
        sweep.name,
        sweep_dir,
        tags=job_tags(job, sweep.name)  # the base job's, with the Ray submission id and git commit
        | {
            "sweep.name": sweep.name,
            "sweep.search": sweep.config.search.name,
            "sweep.scheduler": sweep.config.scheduler.name,
        },
        params=flatten(sweep.config.model_dump(mode="json", exclude_none=True)),
        artifacts={
            "sweep.yaml": redact_text(sweep.path.read_text(), sweep.base_raw),
            "base_job.yaml": dump_yaml(redact_config(sweep.base_raw)),
        },
    )


def results_table(results: tune.ResultGrid, sweep: LoadedSweep, sweep_dir: str) -> pd.DataFrame:
    """One row per trial: its MLflow run, the values the sweep gave it, how far it got and its metric."""
    metric = sweep.config.metric
    rows = []
    for result in results:
        metrics = result.metrics or {}
        history = result.metrics_dataframe
        trial_id = metrics.get("trial_id") or TRIAL_ID_IN_PATH.search(os.path.basename(result.path)).group(1)
        scores = history[metric].dropna() if history is not None and metric in history else pd.Series(dtype=float)
        rows.append(
            {
                "trial_id": trial_id,
                "run_id": remembered_run_id(trial_run_dir(sweep_dir, trial_id)),
                **{key: result.config.get(key) for key in sweep.config.search_space},
                "steps": metrics.get("step"),
                metric: metrics.get(metric),  # the last one: what the trial ended with
                f"best {metric}": (scores.min() if sweep.config.mode == "min" else scores.max()) if len(scores) else None,
                "error": repr(result.error) if result.error else "",
            }
        )
    return pd.DataFrame(rows)


def best_row(table: pd.DataFrame, metric: str, mode: str) -> pd.Series | None:
    scored = table.dropna(subset=[metric])
    if scored.empty:
        return None
    return scored.loc[scored[metric].idxmin() if mode == "min" else scored[metric].idxmax()]


def summarize_sweep(parent: TrackedRun, sweep: LoadedSweep, results: tune.ResultGrid, sweep_dir: str, total_steps: int) -> None:
    client = MlflowClient(parent.uri)
    config = sweep.config
    table = results_table(results, sweep, sweep_dir)
    for row in table.itertuples():  # trials stopped by the scheduler never ended their runs themselves
        if row.run_id and client.get_run(row.run_id).info.status == RunStatus.to_string(RunStatus.RUNNING):
            if row.steps and row.steps < total_steps:
                client.set_tag(row.run_id, "sweep.stopped_at_step", str(row.steps))
            client.set_terminated(row.run_id, "FAILED" if row.error else "FINISHED")

    best = best_row(table, config.metric, config.mode)
    with tempfile.TemporaryDirectory() as directory:
        table.to_csv(os.path.join(directory, "results.csv"), index=False)
        histories = {
            row.trial_id: {key: [(m.step, m.value) for m in client.get_metric_history(row.run_id, key)] for key in ("train/lr", config.metric)}
            for row in table.itertuples()
            if row.run_id
        }
        sweep_plots(table, histories, config, total_steps, directory)
        client.log_artifacts(parent.run_id, directory, "sweep")
    if best is not None:
        tags = [RunTag("best_trial_id", best.trial_id), RunTag("best_run_id", best.run_id or "")]
        if best.run_id:
            client.set_tag(best.run_id, "sweep.best", "true")
            if any(artifact.path == ARTIFACT_PATH for artifact in client.list_artifacts(best.run_id)):  # it finished
                version = register(client, best.run_id, sweep.name)
                tags.append(RunTag("sweep.output_model", f"models:/{version.name}/{version.version}"))
        client.log_batch(
            parent.run_id,
            metrics=[Metric(f"best/{config.metric}", float(best[config.metric]), 0, 0)],
            params=[Param(f"best.{key}", str(best[key])) for key in config.search_space],
            tags=tags,
        )
    print(table.to_string(index=False), flush=True)
