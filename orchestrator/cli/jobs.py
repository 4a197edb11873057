"""Jobs on a Ray cluster through its job API: what `ray job submit / status / logs / stop / list` do, with the job
file checked before anything is sent, and each job tied to its MLflow run (found by the submission id its driver
tags the run with, in the store the job was submitted with).

The cluster is --address, else RAY_API_SERVER_ADDRESS (as for `ray job`), else the local head's job API. Plain
`ray job submit -- python -m orchestrator train JOB` keeps working: these commands read the same jobs.
"""

import asyncio
import os
import re
import shlex
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Annotated

import typer

from orchestrator.cli.app import app, escape
from orchestrator.cli.training import JobOrSweepFile, Overrides, check_file
from orchestrator.config import UserError
from orchestrator.config.redact import redact_text

LOCAL_JOB_API = "http://127.0.0.1:8265"
# Exit codes of `submit --follow` and `logs --follow`: the job's final status, as a shell sees a command's.
EXIT_CODES = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 130}

Address = Annotated[
    str | None,
    typer.Option(
        "--address",
        metavar="URL",
        help=f"The cluster's job API: its dashboard's URL, as `ray job` takes it ({LOCAL_JOB_API}); default: RAY_API_SERVER_ADDRESS, else {LOCAL_JOB_API}.",
    ),
]
# Ray's submission ids (raysubmit_...), job ids (hex) and ids given at submission: a URL path segment, never '..'.
SUBMISSION_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,255}")
SubmissionId = Annotated[str, typer.Argument(metavar="SUBMISSION_ID", help="The job's submission id (from submit or list).", show_default=False)]
Follow = Annotated[bool, typer.Option("--follow", "-f", help="Stream the job's log until it ends; exit with its status.")]


def job_client(address: str | None):
    from ray.job_submission import JobSubmissionClient  # ray: only now

    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or LOCAL_JOB_API
    try:
        return JobSubmissionClient(address)
    except ConnectionError:
        raise UserError(f"--address: no Ray job API answers at {address}; start one with `orchestrator cluster up`") from None
    except ValueError as err:  # Ray's and requests' parsers refuse the address (requests' InvalidURL is one)
        raise UserError(f"--address: not an address of a job API, such as {LOCAL_JOB_API} ({err})") from None


def job_info(client, submission_id: str):
    """The job's details; an id the cluster does not know is a UserError (Ray's client raises a RuntimeError)."""
    try:
        return client.get_job_info(submission_id)
    except RuntimeError as err:
        if "status code 404" not in str(err):
            raise
        raise UserError(f"submission id: no job {submission_id} on {client.get_address()}") from None


def known_job_client(address: str | None, submission_id: str):
    """The client of a cluster that has the job, and the job's details."""
    if not SUBMISSION_ID.fullmatch(submission_id):
        raise UserError(f"submission id: letters, digits, '_', '-' and '.', at most 256 (got {submission_id!r})")
    client = job_client(address)
    return client, job_info(client, submission_id)


def shown(text: str) -> str:
    """An entrypoint or a message of the job API for the terminal: the --set values it holds may be secrets, or
    hold escape sequences."""
    return escape(redact_text(text))


def job_tracking_uri(job) -> str:
    """The store a job's driver logs to: the MLFLOW_TRACKING_URI it was submitted with (`submit` sends this
    shell's), else this shell's default. A tracking.uri set in the job file itself is not known here."""
    from orchestrator.tracking.run import default_tracking_uri  # mlflow: only now

    env_vars = (job.runtime_env or {}).get("env_vars") or {}
    return env_vars.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def job_runs(jobs: list) -> dict:
    """The MLflow run (tracking/run.py TrackedRun) of each job that opened one, by submission id: one search per
    job, in the store each was submitted with. A store that does not answer is said once, on stderr."""
    from orchestrator.tracking.run import store_answers, submitted_runs  # mlflow: only now

    by_store = defaultdict(list)
    for job in jobs:
        if job.submission_id and SUBMISSION_ID.fullmatch(job.submission_id):  # no quote to end the search's string
            by_store[job_tracking_uri(job)].append(job.submission_id)
    runs = {}
    for uri, submission_ids in by_store.items():
        if store_answers(uri):
            runs |= submitted_runs(uri, submission_ids)
        else:
            print(f"MLflow store {shown(uri)} does not answer: its runs are not shown", file=sys.stderr)
    return runs


def entrypoint(file: Path, overrides: list[str], working_dir: Path) -> str:
    """`python -m orchestrator train|sweep FILE`, FILE as the job will see it: relative inside the uploaded working
    directory, else absolute (a cluster whose nodes share this file system)."""
    sweep = check_file(file, overrides)
    path = file.resolve()
    if path.is_relative_to(working_dir.resolve()):
        path = path.relative_to(working_dir.resolve())
    command = ["python", "-m", "orchestrator", "sweep" if sweep else "train", str(path)]
    return shlex.join(command + [argument for key_value in overrides for argument in ("--set", key_value)])


def follow_logs(client, submission_id: str) -> str:
    """Streams the log to stdout until the job ends; its final status."""

    async def tail() -> None:
        async for lines in client.tail_job_logs(submission_id):
            sys.stdout.write(lines)
            sys.stdout.flush()

    asyncio.run(tail())
    while (status := str(client.get_job_status(submission_id).value)) not in EXIT_CODES:
        time.sleep(0.5)  # the log can end a moment before the status is final
    return status


def finish(submission_id: str, status: str) -> None:
    """After a followed log, which ends with the MLflow run's URL its driver printed."""
    print(f"job {submission_id}: {status}")
    raise typer.Exit(EXIT_CODES[status])


@app.command()
def submit(
    file: JobOrSweepFile,
    overrides: Overrides = [],
    follow: Follow = False,
    working_dir: Annotated[Path, typer.Option(metavar="DIR", help="Directory uploaded for the job (Ray applies .gitignore and .rayignore).")] = Path("."),
    address: Address = None,
) -> None:
    """Check a job or sweep file, then submit it to the cluster. MLFLOW_TRACKING_URI set here goes with it.

    \b
    Example:
      orchestrator submit jobs/gpt-tiny.yaml --follow
    """
    if not os.path.isdir(working_dir):  # os.path's answers False for a name the system refuses (too long, NUL)
        raise UserError(f"--working-dir: {working_dir} is not a directory")
    command = entrypoint(file, overrides, working_dir)
    env_vars = {name: os.environ[name] for name in ("MLFLOW_TRACKING_URI",) if name in os.environ}
    client = job_client(address)
    runtime_env = {"working_dir": str(working_dir)} | ({"env_vars": env_vars} if env_vars else {})
    submission_id = client.submit_job(entrypoint=command, runtime_env=runtime_env)
    print(f"submitted {submission_id}: {shown(command)}")
    print(f"Ray dashboard: {client.get_address()}/#/jobs/{submission_id}", flush=True)
    if follow:
        finish(submission_id, follow_logs(client, submission_id))


@app.command()
def status(submission_id: SubmissionId, address: Address = None) -> None:
    """A job's status, entrypoint, times and MLflow run.

    \b
    Example:
      orchestrator status raysubmit_XYZ
    """
    client, info = known_job_client(address, submission_id)
    print(f"job {submission_id}: {info.status.value}" + (f" ({shown(info.message)})" if info.message else ""))
    print(f"entrypoint: {shown(info.entrypoint)}")
    if info.start_time:
        end = info.end_time or time.time() * 1000
        print(f"started: {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(info.start_time / 1000))}, {(end - info.start_time) / 1000:.0f} s")
    if run := job_runs([info]).get(submission_id):
        from orchestrator.tracking.run import print_run_url

        print_run_url(run)


@app.command()
def logs(submission_id: SubmissionId, follow: Follow = False, address: Address = None) -> None:
    """A job's log (its driver's output). --follow streams it until the job ends and exits with its status.

    \b
    Example:
      orchestrator logs raysubmit_XYZ --follow
    """
    client, _ = known_job_client(address, submission_id)
    if follow:
        finish(submission_id, follow_logs(client, submission_id))
    sys.stdout.write(client.get_job_logs(submission_id))


@app.command()
def stop(submission_id: SubmissionId, address: Address = None) -> None:
    """Stop a job. Its MLflow run is marked KILLED and its checkpoints stay: submitted again, it resumes.

    \b
    Example:
      orchestrator stop raysubmit_XYZ
    """
    client, _ = known_job_client(address, submission_id)
    if not client.stop_job(submission_id):
        print(f"job {submission_id} had already ended: {client.get_job_status(submission_id).value}")
        return
    print(f"stop requested for {submission_id}")


@app.command("list")
def list_jobs(address: Address = None) -> None:
    """The cluster's jobs, newest first, with their MLflow runs.

    \b
    Example:
      orchestrator list
    """
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    client = job_client(address)
    table = Table("submission id", "status", "started", "entrypoint", "MLflow run")
    for column in table.columns[:3] + table.columns[4:]:  # ids and URLs whole, to copy
        column.no_wrap = True
    # A driver started by hand (python -m orchestrator train) has no submission id to follow it by.
    jobs = sorted((job for job in client.list_jobs() if job.submission_id), key=lambda job: job.start_time or 0, reverse=True)
    runs = job_runs(jobs)
    for job in jobs:
        started = time.strftime("%m-%d %H:%M:%S", time.localtime(job.start_time / 1000)) if job.start_time else ""
        url = runs[job.submission_id].url if job.submission_id in runs else ""
        # Text, not markup: an entrypoint holds brackets (--set data.paths=[...]) that rich would read as tags
        table.add_row(job.submission_id, str(job.status.value), started, Text(shown(job.entrypoint or "")), Text(url))
    Console(width=200).print(table)
