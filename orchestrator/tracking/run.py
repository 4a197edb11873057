"""The job's MLflow run, seen from the driver: opened before the workers start, closed with the job's outcome.

The run id travels to the workers, so a restarted worker group logs into the same run instead of opening a
duplicate (ray#48664). The id is also remembered next to the run's checkpoints, so the same job submitted again
with the same run_name resumes its MLflow run together with its training state.

A run is tagged with the Ray job submissions that ran it, which is how `orchestrator list` and `status` find the
run of a job (`submitted_runs`).
"""

import json
import os
import socket
import subprocess
import traceback
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pyarrow.fs
from mlflow.entities import Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from orchestrator.config.errors import printable
from orchestrator.config.job import JobConfig
from orchestrator.config.redact import mask_uri_passwords, redact_config, redact_text
from orchestrator.tracking.params import flatten

RUN_MARKER = "mlflow_run.json"
MLFLOW_BATCH_LIMIT = 100  # params per log_batch call
MAX_URL_CHARS = 2000  # of a printed run URL: the store's URI may come from someone else's job
SUBMISSION_TAG = "ray.job_submission_id"  # the submission that runs the run now
SUBMISSIONS_TAG = "ray.job_submission_ids"  # every submission that ran it, oldest first: what runs are found by
MAX_SUBMISSIONS_KEPT = 100  # in SUBMISSIONS_TAG (about 27 characters each; MLflow keeps 5,000 or more of a tag)
# The file of a store on this machine, from what follows the scheme's '://': sqlite:///rel.db, sqlite:////abs.db
STORE_FILES = {"sqlite": lambda rest: rest[1:], "file": lambda rest: rest}
NAMED_STORES = ("databricks", "databricks-uc", "uc")
STORE_ANSWER_SECONDS = 3  # how long `list` waits for a tracking server before it shows jobs without their runs


def default_tracking_uri() -> str:
    """The store of a job that names none: MLFLOW_TRACKING_URI, else mlflow.db in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{os.path.abspath('mlflow.db')}"


def tracking_uri(job: JobConfig) -> str:
    return job.tracking.uri or default_tracking_uri()


@dataclass(frozen=True)
class TrackedRun:
    uri: str
    experiment_id: str
    run_id: str
    resumed: bool | None  # None: a run found by search, not opened here

    @property
    def url(self) -> str:
        """Where a person sees the run, without the store's password, and with no control character to print."""
        uri = mask_uri_passwords(self.uri)
        if uri.startswith("http"):
            url = f"{uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"
        else:
            url = f"run {self.run_id} in {uri} (view with: mlflow ui --backend-store-uri {uri})"
        return printable(url, MAX_URL_CHARS)


def print_run_url(run: TrackedRun, what: str = "MLflow run") -> None:
    """The line that names the run, printed once, last, by train and sweep, and by `status`. Tests read it:
    `MLflow run (new): URL` (tests/helpers.py mlflow_run_id)."""
    opened = "" if run.resumed is None else f" ({'resumed' if run.resumed else 'new'})"
    print(f"{what}{opened}: {run.url}", flush=True)


def job_tags(job: JobConfig, run_name: str) -> dict[str, str]:
    tags = {
        "mlflow.runName": run_name,
        "orchestrator.run_name": run_name,
        "task": job.task,
        "model.family": job.model.family,
        "model.size": "pretrained" if job.model.pretrained else job.model.size,
        "deepspeed.zero_stage": str(job.deepspeed.zero_stage),
        "scaling.num_workers": str(job.scaling.num_workers),
        "parallelism": job.parallelism.layout,  # data, tensor or pipeline
        "host": socket.gethostname(),
        **job.tracking.tags,
    }
    if submission_id := _ray_job_submission_id():
        tags |= submission_tags({}, submission_id)
    if commit := _git_commit():
        tags["mlflow.source.git.commit"] = commit
    return tags


def _ray_job_submission_id() -> str | None:
    """The id `ray job submit` printed; Ray's job supervisor hands it to the entrypoint in this variable."""
    job_config = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}"))
    return job_config.get("metadata", {}).get("job_submission_id")


def submission_tags(tags: dict[str, str], submission_id: str) -> dict[str, str]:
    """The tags of a run with `tags` that the submission now runs: the submissions before it keep finding it."""
    earlier = tags.get(SUBMISSIONS_TAG, "").split()
    ids = earlier if submission_id in earlier else [*earlier, submission_id]
    return {SUBMISSION_TAG: submission_id, SUBMISSIONS_TAG: " ".join(ids[-MAX_SUBMISSIONS_KEPT:])}


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _marker(run_dir: str) -> tuple[pyarrow.fs.FileSystem, str]:
    fs, path = pyarrow.fs.FileSystem.from_uri(run_dir)
    return fs, f"{path}/{RUN_MARKER}"


def remembered_run_id(run_dir: str) -> str | None:
    fs, path = _marker(run_dir)
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(path) as stream:
        return json.loads(stream.read())["run_id"]


def _remember_run_id(run_dir: str, run_id: str) -> None:
    fs, path = _marker(run_dir)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as stream:
        stream.write(json.dumps({"run_id": run_id}).encode())


def open_run(
    uri: str,
    experiment: str,
    run_name: str,
    run_dir: str,
    tags: dict[str, str],
    params: dict[str, object],
    artifacts: dict[str, str],
) -> TrackedRun:
    """Reopens the run remembered in `run_dir`, or creates it with its tags, params and `artifacts` {name: text}."""
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)

    run_id = remembered_run_id(run_dir)
    if run_id is not None:
        client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        if submission_id := tags.get(SUBMISSION_TAG):
            resumed_by = submission_tags(client.get_run(run_id).data.tags, submission_id)
            client.log_batch(run_id, tags=[RunTag(key, value) for key, value in resumed_by.items()])
        return TrackedRun(uri, experiment_id, run_id, resumed=True)

    secrets = redact_config({**params, **tags})  # flat, dotted names: the secret-looking ones are masked
    run_id = client.create_run(experiment_id, run_name=run_name, tags={k: str(secrets[k]) for k in tags}).info.run_id
    run = TrackedRun(uri, experiment_id, run_id, resumed=False)
    with ended_if_raises(run):
        entries = [Param(key, str(secrets[key])) for key in params]
        for start in range(0, len(entries), MLFLOW_BATCH_LIMIT):
            client.log_batch(run_id, params=entries[start : start + MLFLOW_BATCH_LIMIT])
        for name, text in artifacts.items():
            client.log_text(run_id, redact_text(text, {**params, **tags}), name)
        _remember_run_id(run_dir, run_id)
    return run


def start_run(
    job: JobConfig,
    run_name: str,
    run_dir: str,
    artifacts: dict[str, str],
    tags: dict[str, str] | None = None,
    params: dict[str, object] | None = None,
) -> TrackedRun:
    """The run of a training job: the whole resolved job as params, and tags to search runs by."""
    return open_run(
        tracking_uri(job),
        job.tracking.experiment,
        run_name,
        run_dir,
        tags=job_tags(job, run_name) | (tags or {}),
        params=flatten(job.model_dump(mode="json")) | (params or {}),
        artifacts=artifacts,
    )


def end_run(run: TrackedRun, status: str, error: str | None = None) -> None:
    """status: FINISHED, FAILED or KILLED; a failure's text is kept as a tag and an artifact."""
    client = MlflowClient(run.uri)
    if error:
        error = redact_text(error)  # the tag keeps the end of a long traceback: the exception itself
        client.log_batch(run.run_id, tags=[RunTag("error", error[-4000:])])
        client.log_text(run.run_id, error, "error.txt")
    client.set_terminated(run.run_id, status=status)


@contextmanager
def ended_if_raises(run: TrackedRun, stopped: str | None = "KILLED") -> Iterator[None]:
    """Ends the run if the block raises: `stopped` on Ctrl-C or SIGTERM (`ray job stop`; Ray's driver handler turns it
    into SystemExit; None leaves the run to whoever stopped it), or FAILED with the traceback. A run left RUNNING
    would look alive forever."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        if stopped:
            end_run(run, stopped)
        raise
    except Exception:
        end_run(run, "FAILED", traceback.format_exc())
        raise


@contextmanager
def ends_with_outcome(run: TrackedRun, stopped: str | None = "KILLED") -> Iterator[None]:
    """Ends the run with what the block did: FINISHED, or as `ended_if_raises`."""
    with ended_if_raises(run, stopped):
        yield
    end_run(run, "FINISHED")


def store_answers(uri: str) -> bool:
    """Whether the tracking store is there to be searched, asking nothing that waits long or writes: a sqlite file
    or a store directory exists (MLflow would create it), a server answers its health check."""
    scheme, sep, rest = uri.partition("://")
    if not sep:  # a file store's directory, or a platform MLflow names without a scheme
        return uri in NAMED_STORES or os.path.isdir(uri)
    if scheme in STORE_FILES:
        return os.path.exists(STORE_FILES[scheme](rest))
    if scheme in ("http", "https"):
        address = urllib.parse.urlsplit(uri)  # the health check needs no credentials: without the userinfo
        health = address._replace(netloc=address.netloc.rpartition("@")[2], path=f"{address.path.rstrip('/')}/health")
        try:
            with urllib.request.urlopen(health.geturl(), timeout=STORE_ANSWER_SECONDS):
                return True
        except (OSError, ValueError):
            return False
    return True  # another store (databricks://profile, a plugin's): its client says if it is not there


def submitted_runs(uri: str, submission_ids: list[str]) -> dict[str, TrackedRun]:
    """The run each Ray job submission opened or resumed in the store at `uri`, by the tag its driver sets (a
    sweep's: its parent run, opened before its trials'). Submissions without a run there are left out.

    One search per submission: MLflow's filters have neither IN nor OR for tags."""
    client = MlflowClient(uri)
    experiment_ids = [experiment.experiment_id for experiment in client.search_experiments()]
    found = {}
    for submission_id in submission_ids if experiment_ids else ():
        # LIKE finds the id among the others; its '_' matches any character, so each match is checked by word.
        runs = client.search_runs(
            experiment_ids,
            filter_string=f"tags.`{SUBMISSIONS_TAG}` LIKE '%{submission_id}%'",
            order_by=["attributes.start_time ASC"],
        )
        run = next((run for run in runs if submission_id in run.data.tags[SUBMISSIONS_TAG].split()), None)
        if run:
            found[submission_id] = TrackedRun(uri, run.info.experiment_id, run.info.run_id, resumed=None)
    return found
