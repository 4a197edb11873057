"""`orchestrator` / `python -m orchestrator`: the only place that turns a UserError into exit code 2.

Heavy imports (torch, ray) happen inside the commands that need them, so `validate` and `schema` stay fast.
"""

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from orchestrator.config import JobConfig, UserError, load_job

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Distributed training of transformers on Ray.")

JobFile = Annotated[Path, typer.Argument(help="Job YAML file.", show_default=False)]
Overrides = Annotated[
    list[str], typer.Option("--set", help="Override a key of the job: --set train.max_steps=50 (repeatable).")
]


@app.command()
def train(job_file: JobFile, overrides: Overrides = []) -> None:
    """Run a training job on the Ray cluster (or an embedded one).

    Example: python -m orchestrator train jobs/gpt-tiny.yaml --set deepspeed.zero_stage=3
    """
    job = load_job(job_file, overrides)
    from orchestrator.train.launch import launch  # torch, ray, deepspeed: only now

    result, run = launch(job, job_file.stem)
    summary = {key: round(value, 4) for key, value in result.metrics.items() if isinstance(value, float)}
    print(f"finished: {summary}")
    print(f"MLflow run: {run.url}")


@app.command()
def validate(job_file: JobFile, overrides: Overrides = []) -> None:
    """Check a job file without running it; exit 0 if good, 2 with the problem if not.

    Example: python -m orchestrator validate jobs/gpt-tiny.yaml
    """
    load_job(job_file, overrides)
    print(f"{job_file}: valid")


@app.command()
def schema() -> None:
    """Print the JSON schema of job files (for editors and documentation)."""
    print(json.dumps(JobConfig.model_json_schema(), indent=2))


def main() -> None:
    try:
        app()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
