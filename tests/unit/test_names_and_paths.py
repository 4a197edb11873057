"""Names become identifiers and paths only through one checked type; the framework writes and deletes only inside
its roots, and deletes only what it created and marked; a run that fails after it opened is never left RUNNING."""

import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import tiny_job, write_job
from mlflow.tracking import MlflowClient

from orchestrator.config.errors import UserError
from orchestrator.config.load import validate
from orchestrator.config.names import MAX_NAME_LENGTH, derived_name, file_name
from orchestrator.config.paths import MARKER, claim, delete_claimed, path_inside
from orchestrator.config.sweep import SweepConfig

JOB = {"model": {"family": "gpt2", "size": "tiny"}, "data": {"paths": ["c.jsonl"]}, "train": {"max_steps": 1}}
BAD_NAMES = ["", ".", "..", "../..", "../../etc", "/abs", "a/b", "a:b", "-rf", ".hidden", "a b", "x\x00y", "x\ny", "caf\u00e9", "x" * (MAX_NAME_LENGTH + 1)]


def refusal(raw: dict, model=None) -> str:
    with pytest.raises(UserError) as err:
        validate(raw, *([model] if model else []))
    assert "\n" not in str(err.value)
    return str(err.value)


@pytest.mark.parametrize("field", ["run_name", "experiment", "registered_model"])
def test_names_in_a_job_are_refused_at_validation_naming_the_field(field):
    for name in BAD_NAMES:
        assert refusal(JOB | {"tracking": {field: name}}).startswith(f"tracking.{field}: a name "), name
    for name in ["gpt-tiny", "run_2.v3", "A", "x" * MAX_NAME_LENGTH]:
        assert getattr(validate(JOB | {"tracking": {field: name}}).tracking, field) == name


def test_a_sweep_name_is_a_name():
    sweep = {"base": "job.yaml", "search_space": {"train.lr": {"choice": [0.1]}}}
    assert refusal(sweep | {"name": "../../escape"}, SweepConfig).startswith("name: a name ")
    assert validate(sweep | {"name": "lr-sweep"}, SweepConfig).name == "lr-sweep"


def test_tags_follow_mlflow_rules_and_never_show_their_values():
    secret = "v" * 8001
    for tags, message in [
        ({"a" * 251: "v"}, "at most 250 characters"),
        ({"a\tb": "v"}, "MLflow takes letters"),
        ({"../x": "v"}, "normalized relative path"),
        ({".": "v"}, "normalized relative path"),
        ({"": "v"}, "normalized relative path"),
        ({"mlflow.runName": "v"}, "set by orchestrator"),
        ({"token": secret}, "has 8001 characters"),
    ]:
        text = refusal(JOB | {"tracking": {"tags": tags}})
        assert text.startswith("tracking.tags: ") and message in text and secret not in text, text
    assert validate(JOB | {"tracking": {"tags": {"team": "nlp", "a/b.c-d e:f": "x" * 8000}}}).tracking.tags["team"] == "nlp"


def test_names_derived_from_files_and_trials(tmp_path):
    assert file_name(tmp_path / "gpt-tiny.yaml", instead="tracking.run_name") == "gpt-tiny"
    with pytest.raises(UserError, match=r"my job\.yaml: the file's name 'my job' cannot name .*; set tracking\.run_name"):
        file_name(tmp_path / "my job.yaml", instead="tracking.run_name")
    long = derived_name("x" * MAX_NAME_LENGTH, "-20260102-030405")
    assert len(long) == MAX_NAME_LENGTH and long.endswith("x-20260102-030405")
    assert derived_name("sweep", "-a1b2c_00001") == "sweep-a1b2c_00001"
    with pytest.raises(UserError):
        derived_name("sweep", "/../x")


def test_train_refuses_a_job_file_whose_name_cannot_name_its_run(corpus, tmp_path):
    """Before anything starts: no run directory, no MLflow run. With tracking.run_name set, the file's name is free."""
    from typer.testing import CliRunner

    from orchestrator.cli import training  # noqa: F401 - adds the train command
    from orchestrator.cli.app import app

    job = tiny_job(corpus, checkpoint={"dir": str(tmp_path / "runs")})
    result = CliRunner().invoke(app, ["train", str(write_job(tmp_path / "my job.yaml", job))])
    assert isinstance(result.exception, UserError) and "set tracking.run_name" in str(result.exception)
    assert not (tmp_path / "runs").exists()


def test_paths_stay_inside_their_root(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    (root / "link-out").symlink_to(tmp_path / "outside")
    (root / "link-in").symlink_to(root / "kept")
    assert path_inside(str(root), "run-1", "tracking.run_name") == str(root / "run-1")
    assert path_inside(str(root), "link-in", "tracking.run_name") == str(root / "link-in")
    for name in ["..", "../..", ".", "", "/etc", "../runs-sibling", "link-out", "a\x00b"]:
        with pytest.raises(UserError, match=r"^tracking\.run_name: "):
            path_inside(str(root), name, "tracking.run_name")
    assert path_inside("s3://bucket/runs", "run-1", "name") == "s3://bucket/runs/run-1"
    for name in ["..", "../other", "/bucket2/x", "a/../.."]:
        with pytest.raises(UserError, match="would put files outside s3://bucket/runs"):
            path_inside("s3://bucket/runs", name, "name")


def sentinels(tmp_path: Path) -> list[Path]:
    """A file in the checkpoint root, in a sibling run, next to the root and in a directory outside it."""
    files = [tmp_path / "runs" / "root.txt", tmp_path / "runs" / "other-run" / "ckpt.txt", tmp_path / "beside.txt", tmp_path / "outside" / "precious.txt"]
    for path in files:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("keep")
    return files


def test_restart_deletes_only_a_marked_run_directory_inside_the_root(tmp_path):
    root = tmp_path / "runs"
    claim(str(root / "other-run"), "run", "tracking.run_name")
    claim(str(tmp_path / "outside"), "run", "tracking.run_name")  # marked, but not inside the root
    files = sentinels(tmp_path)
    (root / "link-out").symlink_to(tmp_path / "outside")
    (root / "link-in").symlink_to(root / "other-run")
    (root / "unmarked").mkdir()
    (root / "unmarked" / "data.bin").write_text("theirs")
    claim(str(root / "a-sweep"), "sweep", "name")
    refused = {
        "..": "would put files outside",
        "../..": "would put files outside",
        ".": "would put files outside",
        "../outside": "would put files outside",
        "link-out": "would put files outside",
        "link-in": "is a symbolic link",
        "unmarked": "not created by orchestrator",
        "a-sweep": "orchestrator sweep directory",
    }
    for name, message in refused.items():
        with pytest.raises(UserError, match=message):
            delete_claimed(str(root), name, "run", "tracking.run_name")
    assert all(path.read_text() == "keep" for path in files) and (root / "unmarked" / "data.bin").exists()
    assert (root / "a-sweep" / MARKER).exists()

    assert delete_claimed(str(root), "never-ran", "run", "tracking.run_name") is None
    claim(str(root / "mine"), "run", "tracking.run_name")
    (root / "mine" / "checkpoint_1").mkdir()
    assert delete_claimed(str(root), "mine", "run", "tracking.run_name") == str(root / "mine")
    assert not (root / "mine").exists()
    assert all(path.read_text() == "keep" for path in files)


def test_restart_through_launch_refuses_an_unmarked_directory(tmp_path, capsys):
    from orchestrator.train.launch import forget_run

    files = sentinels(tmp_path)
    with pytest.raises(UserError, match="not created by orchestrator"):
        forget_run(str(tmp_path / "runs"), "other-run")
    with pytest.raises(UserError, match="outside"):
        forget_run(str(tmp_path / "runs"), "..")
    assert all(path.read_text() == "keep" for path in files)
    claim(str(tmp_path / "runs" / "mine"), "run", "tracking.run_name")
    forget_run(str(tmp_path / "runs"), "mine")
    assert "deleted the checkpoints" in capsys.readouterr().out and not (tmp_path / "runs" / "mine").exists()


def test_claim_creates_and_marks_or_refuses_what_is_not_its_own(tmp_path):
    claim(str(tmp_path / "new" / "run"), "run", "tracking.run_name")
    assert (tmp_path / "new" / "run" / MARKER).is_file()
    claim(str(tmp_path / "new" / "run"), "run", "tracking.run_name")  # a resumed run: its own, again
    (tmp_path / "empty").mkdir()
    claim(str(tmp_path / "empty"), "run", "tracking.run_name")
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("x")
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / MARKER).write_text("{not json")
    for name, message in [("theirs", "not created by orchestrator"), ("a-file", "is a file"), ("corrupt", "not created by orchestrator")]:
        with pytest.raises(UserError, match=message):
            claim(str(tmp_path / name), "run", "tracking.run_name")
    with pytest.raises(UserError, match="an orchestrator run directory, not a sweep"):
        claim(str(tmp_path / "new" / "run"), "sweep", "name")
    assert not (tmp_path / "theirs" / MARKER).exists()


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", ""])
    process.wait()
    return process.pid


def test_orphan_cleanup_removes_only_marked_local_copies_of_this_user(tmp_path, monkeypatch):
    from orchestrator.train import checkpoint

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    files = sentinels(tmp_path)
    pid = dead_pid()
    prefix = f"{checkpoint.LOCAL_PREFIX}{pid}-"
    orphan = scratch / f"{prefix}orphan"
    orphan.mkdir()
    (orphan / checkpoint.LOCAL_MARKER).touch()
    (orphan / "state").mkdir()
    unmarked = scratch / f"{prefix}unmarked"
    unmarked.mkdir()
    (unmarked / "data").write_text("theirs")
    (tmp_path / "outside" / checkpoint.LOCAL_MARKER).touch()
    (scratch / f"{prefix}link").symlink_to(tmp_path / "outside")
    (scratch / f"{prefix}file").write_text("theirs")

    checkpoint.remove_orphans()
    assert not orphan.exists()
    assert (unmarked / "data").exists() and (scratch / f"{prefix}file").exists() and (scratch / f"{prefix}link").is_symlink()
    assert all(path.read_text() == "keep" for path in files)


class UnreadableData(SimpleNamespace):
    """Prepared data whose splits cannot be read: what the session and its report read beyond the fields given."""

    def __getattr__(self, name):
        raise OSError(f"disk full while reading the prepared data's {name}")


def without_a_cluster(monkeypatch) -> None:
    """The driver session (train/session.py) up to its MLflow run, with no Ray and data that fails to be read once
    the run is open."""
    from orchestrator.train import session

    monkeypatch.setattr(session.runtime, "connect", lambda address: "nowhere")
    monkeypatch.setattr(session.runtime, "check_resources", lambda job: None)
    monkeypatch.setattr(session, "prepare", lambda job: UnreadableData(train_sequences=8, uncached=False))
    monkeypatch.setattr(session, "total_steps", lambda job, sequences: 1)


def test_a_failure_after_the_run_opened_ends_it_failed(tmp_path, mlflow_uri, monkeypatch, capsys):
    """In launch: data prepared, run opened, then the data cannot be read: the run must not stay RUNNING, and its
    URL is still the last line printed."""
    from orchestrator.train import launch as launching

    job = validate(JOB | {"checkpoint": {"dir": str(tmp_path / "runs")}, "tracking": {"uri": mlflow_uri, "experiment": "outcome", "run_name": "breaks"}})
    without_a_cluster(monkeypatch)
    with pytest.raises(OSError):
        launching.launch(job, None, restart=False)
    client = MlflowClient(mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("outcome").experiment_id])
    assert run.info.status == "FAILED" and "disk full" in run.data.tags["error"]
    assert (tmp_path / "runs" / "breaks" / MARKER).is_file()
    assert (
        capsys.readouterr().out.splitlines()[-1]
        == f"MLflow run (new): run {run.info.run_id} in {mlflow_uri} (view with: mlflow ui --backend-store-uri {mlflow_uri})"
    )


def test_restart_forgets_the_runs_checkpoints_and_mlflow_run_so_the_job_opens_a_new_one(tmp_path, mlflow_uri, monkeypatch, capsys):
    """`train --restart` (launch): the run's directory goes, with the checkpoints Ray Train would resume from and the
    MLflow run it remembers, so the same job starts over in a new run. (Submitted to a cluster through the CLI:
    tests/unit/test_fuzz_inputs.py.)"""
    from orchestrator.train import launch as launching

    job = validate(JOB | {"checkpoint": {"dir": str(tmp_path / "runs")}, "tracking": {"uri": mlflow_uri, "experiment": "restart", "run_name": "again"}})
    without_a_cluster(monkeypatch)
    with pytest.raises(OSError):
        launching.launch(job, None, restart=False)
    first = capsys.readouterr().out.splitlines()[-1]
    (tmp_path / "runs" / "again" / "checkpoint_000001").mkdir()
    with pytest.raises(OSError):
        launching.launch(job, None, restart=True)
    out = capsys.readouterr().out
    assert f"--restart: deleted the checkpoints in {tmp_path / 'runs' / 'again'}" in out
    assert not (tmp_path / "runs" / "again" / "checkpoint_000001").exists()
    client = MlflowClient(mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("restart").experiment_id])
    assert len(runs) == 2
    assert {line.split(" in ")[0] for line in (first, out.splitlines()[-1])} == {f"MLflow run (new): run {run.info.run_id}" for run in runs}


def test_a_run_whose_own_setup_fails_ends_failed(tmp_path, mlflow_uri):
    """open_run: the run is created, then remembering it beside its checkpoints fails (a file where the directory
    should be): FAILED, not RUNNING."""
    from orchestrator.tracking.run import start_run

    job = validate(JOB | {"tracking": {"uri": mlflow_uri, "experiment": "setup"}})
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(OSError):
        start_run(job, "unwritable", str(tmp_path / "a-file" / "run"), artifacts={"notes.txt": "x"})
    client = MlflowClient(mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("setup").experiment_id])
    assert run.info.status == "FAILED"


def test_a_sweep_that_fails_after_its_run_opened_ends_it_failed(tmp_path, mlflow_uri, monkeypatch, capsys):
    from orchestrator.config.load import LoadedSweep
    from orchestrator.tune import sweep as sweeping

    base_raw = JOB | {"checkpoint": {"dir": str(tmp_path / "runs")}, "tracking": {"uri": mlflow_uri, "experiment": "sweeps"}}
    path = tmp_path / "lr.yaml"
    path.write_text("base: job.yaml\n")
    config = validate({"base": "job.yaml", "search_space": {"train.lr": {"choice": [0.1, 0.2]}}}, SweepConfig)
    sweep = LoadedSweep(path, config, "lr", tmp_path / "job.yaml", base_raw, validate(base_raw))
    without_a_cluster(monkeypatch)
    monkeypatch.setattr(sweeping.ray, "cluster_resources", lambda: {"CPU": 2})
    monkeypatch.setattr(sweeping, "tuner", lambda sweep, context, steps, at_once: context.data.train)  # trials read the data
    with pytest.raises(OSError):
        sweeping.run_sweep(sweep)
    client = MlflowClient(mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("sweeps").experiment_id])
    assert run.info.status == "FAILED" and "disk full" in run.data.tags["error"]
    assert (tmp_path / "runs" / "lr" / MARKER).is_file()
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"MLflow sweep run (new): run {run.info.run_id} in {mlflow_uri}")
