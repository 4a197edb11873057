"""`orchestrator` / `python -m orchestrator`: the only place that turns a UserError into exit code 2.

Heavy imports (torch, ray) happen inside the commands that need them, so `validate` and `schema` stay fast.
"""

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from orchestrator.config import JobConfig, UserError, load_job
from orchestrator.config.load import is_sweep, load_sweep, read_yaml, storage_path
from orchestrator.tracking.redact import redact_text
from orchestrator.train.manifest import check_resumable

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Distributed training of transformers on Ray.")

JobFile = Annotated[Path, typer.Argument(help="Job YAML file.", show_default=False)]
Overrides = Annotated[
    list[str], typer.Option("--set", help="Override a key of the job: --set train.max_steps=50 (repeatable).")
]


@app.command()
def train(
    job_file: JobFile,
    overrides: Overrides = [],
    restart: Annotated[
        bool, typer.Option("--restart", help="Start over: delete the checkpoints of the job's run_name and open a new MLflow run.")
    ] = False,
) -> None:
    """Run a training job on the Ray cluster (or an embedded one). A job submitted again with the same
    tracking.run_name resumes from its last checkpoint, in the same MLflow run, unless --restart.

    Example: python -m orchestrator train jobs/gpt-tiny.yaml --set deepspeed.zero_stage=3
    """
    job = load_job(job_file, overrides)
    if job.tracking.run_name and not restart:
        check_resumable(job, f"{storage_path(job)}/{job.tracking.run_name}")
    from orchestrator.train.launch import launch  # torch, ray, deepspeed: only now

    result, run = launch(job, job_file.stem, restart=restart)
    summary = {key: round(value, 4) for key, value in result.metrics.items() if isinstance(value, float)}
    print(f"finished: {summary}")
    print(f"MLflow run: {run.url}")


@app.command()
def prepare(job_file: JobFile, overrides: Overrides = []) -> None:
    """Run only the job's data pipeline: clean, tokenize, encode and cache its data, and print the data report.

    Example: python -m orchestrator prepare jobs/fortunes-classify.yaml
    """
    job = load_job(job_file, overrides)
    from orchestrator import runtime  # ray: only now
    from orchestrator.data.pipeline import prepare as prepare_data

    print(f"connected to {runtime.connect()}", flush=True)
    prepare_data(job)


@app.command()
def sweep(
    sweep_file: Annotated[Path, typer.Argument(help="Sweep YAML file.", show_default=False)],
) -> None:
    """Run a hyperparameter sweep of a job with Ray Tune; the same sweep run again resumes it.

    Example: python -m orchestrator sweep jobs/sweeps/lr-schedules.yaml
    """
    loaded = load_sweep(sweep_file)
    from orchestrator.tune.sweep import run_sweep  # torch, ray, deepspeed: only now

    _, parent = run_sweep(loaded)
    print(f"MLflow sweep run: {parent.url}")


@app.command()
def validate(
    file: Annotated[Path, typer.Argument(help="Job or sweep YAML file.", show_default=False)],
    overrides: Overrides = [],
) -> None:
    """Check a job or sweep file without running it; exit 0 if good, 2 with the problem if not.

    Example: python -m orchestrator validate jobs/sweeps/lr-schedules.yaml
    """
    if is_sweep(read_yaml(file)):
        if overrides:
            raise UserError("--set: applies to job files; a sweep sets job keys in its overrides section")
        load_sweep(file)
    else:
        load_job(file, overrides)
    print(f"{file}: valid")


ModelSpec = Annotated[
    str,
    typer.Argument(
        help="Exported model directory, MLflow URI (runs:/<run_id>/model) or job YAML file (its latest run).",
        show_default=False,
    ),
]
Inputs = Annotated[
    list[Path],
    typer.Option("--input", "-i", help="Input file (jsonl, json, parquet, csv, txt); repeatable.", show_default=False),
]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Rows per model call.")]


@app.command()
def predict(
    model: ModelSpec,
    inputs: Inputs,
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory for the predictions.", show_default=False)],
    output_format: Annotated[str, typer.Option("--format", help="parquet or jsonl.")] = "parquet",
    text_field: Annotated[str | None, typer.Option(help="Column holding the text; default: the trained one.")] = None,
    batch_size: BatchSize = 32,
) -> None:
    """Write the model's predictions for every row of the input files, with an actor pool on the Ray cluster.

    Example: python -m orchestrator predict jobs/gpt-tiny.yaml -i corpus.jsonl -o predictions/ --format jsonl
    """
    from orchestrator import runtime  # ray, torch: only now
    from orchestrator.inference import batch

    print(f"connected to {runtime.connect()}")
    model_dir = batch.resolve_model(model, None)
    files = [str(path) for path in inputs]
    batch.predict(model_dir, files, output, output_format, text_field, batch_size=batch_size)


@app.command()
def evaluate(
    model: ModelSpec,
    inputs: Inputs,
    output_json: Annotated[Path | None, typer.Option(help="Also write the metrics to this JSON file.")] = None,
    batch_size: BatchSize = 32,
) -> None:
    """Score the model on labelled input files with the metrics its task reports in training.

    Example: python -m orchestrator evaluate runs:/<run_id>/model -i data/val.jsonl --output-json metrics.json
    """
    from orchestrator import runtime  # ray, torch: only now
    from orchestrator.inference import batch

    print(f"connected to {runtime.connect()}")
    metrics = batch.evaluate(batch.resolve_model(model, None), [str(path) for path in inputs], batch_size=batch_size)
    if output_json:
        output_json.write_text(json.dumps(metrics, indent=2) + "\n")
        print(f"metrics: {output_json}")


@app.command()
def schema() -> None:
    """Print the JSON schema of job files (for editors and documentation)."""
    print(json.dumps(JobConfig.model_json_schema(), indent=2))


def main() -> None:
    # Ctrl-C, and SIGTERM from `ray job stop` (which Ray's driver turns into SystemExit), mark the MLflow run KILLED
    # (tracking/run.py); the last checkpoint stays, and the job resumes from it when submitted again.
    try:
        app()
    except UserError as err:  # it may quote a value of the job: secrets are masked
        print(f"error: {redact_text(str(err))}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("stopped; the run can resume from its last checkpoint (submit the job again)", file=sys.stderr)
        sys.exit(130)
