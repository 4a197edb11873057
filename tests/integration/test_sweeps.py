"""Real sweeps: Ray Tune trials that are each a Ray Train + DeepSpeed run, on the test cluster and MLflow server.

Trials use one worker each, so the 2-CPU test cluster runs two at a time.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers import ANSI, REPO, ray_state, submit, tiny_job, wait_until, write_sweep
from mlflow.tracking import MlflowClient

from orchestrator.config.job import SCHEDULE_CLASSES
from orchestrator.train.schedules import lr_at

pytestmark = pytest.mark.integration
STEPS = 20


def sweep_job(corpus: Path, tmp: Path, experiment: str, **train) -> dict:
    return tiny_job(
        corpus,
        train={"max_steps": STEPS, "eval_every": 5, "log_every": 1} | train,
        scaling={"num_workers": 1},
        checkpoint={"every_steps": 5, "keep": 2, "dir": str(tmp / "runs")},
        tracking={"experiment": experiment, "system_metrics_every_s": 5},
    )


def children_of(client: MlflowClient, parent_id: str) -> list:
    experiment_id = client.get_run(parent_id).info.experiment_id
    return client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")


def parent_run(client: MlflowClient, experiment: str, name: str):
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    (run,) = client.search_runs([experiment_id], filter_string=f"tags.`sweep.name` = '{name}' and tags.mlflow.runName = '{name}'")
    return run


def tune_results(sweep_dir: Path) -> dict[str, list[dict]]:
    """Every result Tune recorded, with the config the trial had at the time, per trial directory."""
    return {
        path.parent.name: [json.loads(line) for line in path.read_text().splitlines() if line.strip()] for path in sweep_dir.glob("run_trial_*/result.json")
    }


@pytest.fixture(scope="module")
def client(mlflow_server) -> MlflowClient:
    return MlflowClient(mlflow_server)


@pytest.fixture(scope="module")
def asha_sweep(cluster, corpus, tmp_path_factory) -> tuple[str, Path]:
    """An Optuna + ASHA sweep submitted with `ray job submit`: its output and directory."""
    tmp_path = tmp_path_factory.mktemp("asha")
    path = write_sweep(
        tmp_path,
        sweep_job(corpus, tmp_path, "sweep-asha"),
        name="asha",
        search_space={
            "train.optimizer.lr": {"loguniform": [3e-4, 1e-2]},
            "train.schedule.name": {"choice": ["constant", "linear", "cosine", "exponential"]},
        },
        search={"name": "optuna"},
        scheduler={"name": "asha", "grace_period": 5, "reduction_factor": 2},
        num_samples=4,
    )
    return submit(cluster, "sweep", str(path)), tmp_path


def test_optuna_asha_sweep_submitted_to_the_cluster(asha_sweep, client):
    output, tmp_path = asha_sweep
    assert "2 trial(s) at a time" in output

    parent = parent_run(client, "sweep-asha", "asha")
    assert parent.info.status == "FINISHED"
    assert parent.data.params["search_space.train.optimizer.lr.loguniform"] == "[0.0003, 0.01]"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)} | {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert {"sweep.yaml", "sweep/results.csv", "sweep/lr_schedules.png", "sweep/eval_loss_by_trial.png", "sweep/eval_loss_vs_lr.png"} <= artifacts

    children = children_of(client, parent.info.run_id)
    assert len(children) == 4 and all(child.info.status == "FINISHED" for child in children)
    for child in children:
        assert child.data.params["train.max_steps"] == str(STEPS)  # the whole resolved job
        assert child.data.tags["sweep.varied"] == "train.optimizer.lr, train.schedule.name"
        assert float(child.data.params["sweep.train.optimizer.lr"]) == float(child.data.params["train.optimizer.lr"])

    # The best trial is the one whose last reported metric is lowest, read back from the children themselves.
    last_eval = {child.info.run_id: max(client.get_metric_history(child.info.run_id, "eval/loss"), key=lambda m: m.step).value for child in children}
    best_id = min(last_eval, key=last_eval.get)
    assert parent.data.tags["best_run_id"] == best_id
    assert parent.data.metrics["best/eval/loss"] == pytest.approx(last_eval[best_id])
    best = client.get_run(best_id)
    assert best.data.tags["sweep.best"] == "true"
    registered = client.get_model_version("asha", parent.data.tags["sweep.output_model"].rsplit("/", 1)[1])
    assert parent.data.tags["sweep.output_model"].startswith("models:/asha/") and registered.run_id == best_id

    table = pd.read_csv(client.download_artifacts(parent.info.run_id, "sweep/results.csv", str(tmp_path)))
    assert sorted(table["run_id"]) == sorted(last_eval)


# Debian's chromium as root, offline: no sandbox, and nothing that would reach beyond loopback.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = REPO / "test-artifacts" / "mlflow-ui"


def test_the_mlflow_ui_shows_the_sweep_its_trials_plots_and_registered_model(asha_sweep, client, mlflow_server):
    """What a person reviewing the sweep clicks through, in headless Chromium driven by Playwright; each page is
    saved as a screenshot in test-artifacts/mlflow-ui/."""
    from playwright.sync_api import expect, sync_playwright

    parent = parent_run(client, "sweep-asha", "asha")
    best = client.get_run(parent.data.tags["best_run_id"])
    experiment = f"{mlflow_server}/#/experiments/{parent.info.experiment_id}"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{experiment}/runs")
            row = page.locator("[role=row]").filter(has=page.get_by_role("link", name="asha", exact=True))
            row.locator("button[data-component-id*='runnamecellrenderer']").click()  # unfolds the parent's child runs
            for child in children_of(client, parent.info.run_id):
                expect(page.get_by_role("link", name=child.info.run_name, exact=True)).to_be_visible()
            page.screenshot(path=SCREENSHOTS / "sweep_and_trials.png")

            for run, folder, plot in [(parent, "sweep", "lr_schedules.png"), (best, "plots", "training_curves.png")]:
                page.goto(f"{experiment}/runs/{run.info.run_id}/artifacts")
                page.get_by_text(folder, exact=True).click()
                page.get_by_text(plot, exact=True).click()
                image = page.locator("img[src^='blob:']").first  # the preview of the downloaded file
                expect(image).to_be_visible()
                assert image.evaluate("image => image.complete && image.naturalWidth") > 100
                page.screenshot(path=SCREENSHOTS / f"{run.info.run_name}_{plot}")

            page.goto(f"{mlflow_server}/#/models/asha")
            expect(page.get_by_role("link", name="Version 1", exact=True)).to_be_visible()
            page.screenshot(path=SCREENSHOTS / "registered_model.png")
        finally:
            browser.close()


def test_killed_sweep_resumes_without_rerunning_finished_trials(cluster, corpus, client, tmp_path):
    path = write_sweep(
        tmp_path,
        sweep_job(corpus, tmp_path, "sweep-resume"),
        name="resume",
        search_space={"train.optimizer.lr": {"grid": [1e-3, 3e-3, 1e-2]}},
        num_samples=1,
    )
    command = [sys.executable, "-m", "orchestrator", "sweep", str(path)]
    # Tune saves its experiment state every 10 s at least, unless told a period: 1 s, so the kill can come soon after
    # a trial finished
    saving_each_second = cluster.env | {"TUNE_GLOBAL_CHECKPOINT_S": "1"}
    first = subprocess.Popen(command, cwd=REPO, env=saving_each_second, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        finished = []
        while not finished:
            assert time.monotonic() < deadline and first.poll() is None, "no trial finished before the sweep ended"
            time.sleep(2)
            experiment = client.get_experiment_by_name("sweep-resume")
            runs = client.search_runs([experiment.experiment_id]) if experiment else []
            finished = [run for run in runs if run.data.tags.get("sweep.trial_id") and run.info.status == "FINISHED"]
        time.sleep(3)  # a save of the experiment state after the trial finished
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    done_before = {run.data.tags["sweep.trial_id"] for run in finished}

    second = subprocess.run(command, cwd=REPO, env=cluster.env, capture_output=True, text=True, timeout=600)
    output = ANSI.sub("", second.stdout + second.stderr)
    assert second.returncode == 0, output[-5000:]
    assert "resuming the sweep" in output

    parent = parent_run(client, "sweep-resume", "resume")
    children = children_of(client, parent.info.run_id)
    assert len(children) == 3 and all(child.info.status == "FINISHED" for child in children)
    for child in children:  # a finished trial did not train again: its run has each step once
        if child.data.tags["sweep.trial_id"] in done_before:
            steps = [metric.step for metric in client.get_metric_history(child.info.run_id, "train/loss")]
            assert sorted(steps) == list(range(1, STEPS + 1)), steps
    # The killed driver's running trial left its worker group's CPUs reserved (Ray does not remove that placement
    # group); the second run released it, and its own are gone with it: nothing holds CPUs for the next jobs.
    wait_until(lambda: not ray_state(cluster, "placement-groups", "state=CREATED"), 60, "no placement group left")


def test_pbt_exploits_and_the_mutated_learning_rate_takes_effect(cluster, corpus, client, tmp_path):
    """2 trials of 1 worker on the 2 CPUs, waiting for each other at the perturbation step (synch, at step 10): there,
    the weaker exploits the stronger. Without synch, two 20-step trials of a few seconds can each pass every step before
    the other has a checkpoint to give (seen: no exploit). Step 20 ends the trials: no exploit there."""
    schedule = {"name": "linear", "warmup_steps": 0}
    path = write_sweep(
        tmp_path,
        sweep_job(corpus, tmp_path, "sweep-pbt", schedule=schedule),
        name="pbt",
        search_space={"train.optimizer.lr": {"loguniform": [1e-4, 1e-2]}},
        scheduler={"name": "pbt", "perturbation_interval": 10, "quantile_fraction": 0.5, "resample_probability": 0.0, "synch": True},
        num_samples=2,
        seed=1,
    )
    result = subprocess.run([sys.executable, "-m", "orchestrator", "sweep", str(path)], cwd=REPO, env=cluster.env, capture_output=True, text=True, timeout=600)
    output = ANSI.sub("", result.stdout + result.stderr)
    assert result.returncode == 0, output[-5000:]

    sweep_dir = tmp_path / "runs" / "pbt"
    # PBT's record of each exploit: [trial, cloned trial, iterations, cloned config, new config]
    (exploit,) = [json.loads(line) for line in (sweep_dir / "pbt_global.txt").read_text().splitlines()]
    mutated = exploit[5]["train.optimizer.lr"]
    for trial, results in tune_results(sweep_dir).items():
        for row in results:  # the learning rate in use is the one of the trial's config at that time, never the checkpoint's
            expected = lr_at(SCHEDULE_CLASSES["linear"](**schedule), row["config"]["train.optimizer.lr"], STEPS, range(row["step"], row["step"] + 1))
            assert row["train/lr"] == pytest.approx(expected[0], rel=1e-5), (trial, row["step"], row["config"])

    # Each trial's MLflow run has every step's rate: Tune's result.json of a restarted trial is copied back from the
    # sweep directory's last sync and can lack the rows after the exploit (seen), so the runs show what was trained.
    parent = parent_run(client, "sweep-pbt", "pbt")
    children = children_of(client, parent.info.run_id)
    assert len(children) == 2  # an exploiting trial logs on into its own run
    linear = SCHEDULE_CLASSES["linear"](**schedule)
    originals = {run.info.run_id: float(run.data.params["sweep.train.optimizer.lr"]) for run in children}
    schedules = {lr: lr_at(linear, lr, STEPS, range(STEPS + 1)) for lr in (mutated, *originals.values())}
    trained_after_the_exploit = []
    for run in children:
        rates = {metric.step: metric.value for metric in client.get_metric_history(run.info.run_id, "train/lr")}
        assert sorted(rates) == list(range(1, STEPS + 1)), run.info.run_name
        assert [rates[step] for step in range(1, 11)] == pytest.approx(schedules[originals[run.info.run_id]][1:11], rel=1e-5)
        after = [rates[step] for step in range(11, STEPS + 1)]
        trained_after_the_exploit += [lr for lr, rate in schedules.items() if after == pytest.approx(rate[11:], rel=1e-5)]
    # the stronger trial trains on with its own rate, the weaker from the stronger's checkpoint with the mutated one
    assert sorted(trained_after_the_exploit) == sorted([exploit[4]["train.optimizer.lr"], mutated]), (originals, mutated)
