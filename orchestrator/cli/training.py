"""Commands that run the work itself, in this process as the driver: train, sweep, prepare, predict, evaluate; and
the ones that only read job files: validate, schema."""

import json
import math
import os
import shutil
from pathlib import Path
from typing import Annotated

import typer

from orchestrator.cli.app import app
from orchestrator.config import JobConfig, UserError
from orchestrator.config.load import is_sweep, read_yaml
from orchestrator.config.names import file_name
from orchestrator.config.paths import path_inside, storage_path
from orchestrator.data.checks import checked_job, checked_sweep
from orchestrator.train.manifest import check_resumable

JobFile = Annotated[Path, typer.Argument(metavar="JOB_FILE", help="Job YAML file.", show_default=False)]
JobOrSweepFile = Annotated[Path, typer.Argument(metavar="FILE", help="Job or sweep YAML file.", show_default=False)]
Overrides = Annotated[
    list[str],
    typer.Option(
        "--set",
        metavar="KEY=VALUE",
        help="Set a key of the job (of a sweep: of its base job, after the sweep's overrides), the value read as YAML: --set train.max_steps=50; repeatable.",
    ),
]


def check_ray_address(address: str | None) -> str | None:
    """Refuses, before connecting, a job API URL given where the cluster itself is meant (they are easily swapped)."""
    if address and "://" in address and not address.startswith("ray://"):
        raise UserError(
            f"--address: {address} is a URL; give the Ray cluster's GCS address (host:6379) or auto "
            "(a job API's URL is for submit, status, logs, stop and list)"
        )
    return address


RayAddress = Annotated[
    str | None,
    typer.Option(
        "--address",
        metavar="ADDRESS",
        callback=check_ray_address,
        help="The Ray cluster to run on: its GCS address, as ray.init takes it (127.0.0.1:6379, or auto); default: "
        "RAY_ADDRESS, else the local head, else an embedded Ray.",
    ),
]


@app.command()
def train(
    job_file: JobFile,
    overrides: Overrides = [],
    restart: Annotated[bool, typer.Option("--restart", help="Start over: delete the checkpoints of the job's run_name and open a new MLflow run.")] = False,
    address: RayAddress = None,
) -> None:
    """Run a training job on the Ray cluster (or an embedded one). A job submitted again with the same
    tracking.run_name resumes from its last checkpoint, in the same MLflow run, unless --restart.

    \b
    Example:
      python -m orchestrator train jobs/gpt-tiny.yaml --set deepspeed.zero_stage=3
    """
    job = checked_job(job_file, overrides)
    # Without a run_name, the run is named after the job file (and the time), so that name must be a valid one.
    job_name = None if job.tracking.run_name else file_name(job_file, instead="tracking.run_name")
    if job.tracking.run_name and not restart:
        check_resumable(job, path_inside(storage_path(job), job.tracking.run_name, "tracking.run_name"))
    from orchestrator.train.launch import launch  # torch, ray, deepspeed: only now

    launch(job, job_name, restart=restart, address=address)


@app.command()
def prepare(job_file: JobFile, overrides: Overrides = [], address: RayAddress = None) -> None:
    """Run the job's data pipeline only, and print its data report. It cleans, tokenizes, encodes and caches the
    data, on the Ray cluster, for the jobs that train on it.

    \b
    Example:
      python -m orchestrator prepare jobs/fortunes-classify.yaml
    """
    job = checked_job(job_file, overrides)
    from orchestrator import runtime  # ray: only now
    from orchestrator.data.pipeline import prepare as prepare_data
    from orchestrator.data.pipeline import remove_uncached

    print(f"connected to {runtime.connect(address)}", flush=True)
    remove_uncached(prepare_data(job))  # with data.cache: false, nothing would read the splits


@app.command()
def sweep(
    sweep_file: Annotated[Path, typer.Argument(metavar="SWEEP_FILE", help="Sweep YAML file.", show_default=False)],
    overrides: Overrides = [],
    address: RayAddress = None,
) -> None:
    """Run a hyperparameter sweep of a job with Ray Tune. The same sweep run again resumes it.

    \b
    Example:
      python -m orchestrator sweep jobs/sweeps/lr-schedules.yaml --set train.max_steps=50
    """
    loaded = checked_sweep(sweep_file, overrides)
    from orchestrator.tune.sweep import run_sweep  # torch, ray, deepspeed: only now

    run_sweep(loaded, address)


@app.command()
def validate(
    file: JobOrSweepFile,
    overrides: Overrides = [],
) -> None:
    """Check a job or sweep file without running it. Exit 0 if it is good, 2 with the problem if not.

    \b
    Example:
      python -m orchestrator validate jobs/sweeps/lr-schedules.yaml
    """
    check_file(file, overrides)
    print(f"{file}: valid")


def check_file(file: Path, overrides: list[str]) -> bool:
    """Loads a job or sweep file as its command would, raising a UserError for any problem; True for a sweep. Writes
    nothing."""
    raw = read_yaml(file)  # once: a file can be megabytes
    sweep = is_sweep(raw)
    if sweep:
        checked_sweep(file, overrides, raw)
    elif not checked_job(file, overrides, raw).tracking.run_name:
        file_name(file, instead="tracking.run_name")  # the run is named after the file
    return sweep


ModelSpec = Annotated[
    str,
    typer.Argument(
        metavar="MODEL",
        help="Exported model directory, MLflow URI (runs:/<run_id>/model) or job YAML file (its latest run).",
        show_default=False,
    ),
]
Inputs = Annotated[
    list[Path],
    typer.Option("--input", "-i", metavar="FILE", help="Input file (jsonl, json, parquet, csv, txt); repeatable.", show_default=False),
]
BatchSize = Annotated[int, typer.Option("--batch-size", metavar="ROWS", min=1, help="Rows per model call.")]


@app.command()
def predict(
    model: ModelSpec,
    inputs: Inputs,
    output: Annotated[Path, typer.Option("--output", "-o", metavar="DIR", help="Directory for the predictions.", show_default=False)],
    output_format: Annotated[str, typer.Option("--format", metavar="FORMAT", help="parquet or jsonl.")] = "parquet",
    text_field: Annotated[str | None, typer.Option(metavar="COLUMN", help="Column holding the text; default: the trained one.")] = None,
    batch_size: BatchSize = 32,
    address: RayAddress = None,
) -> None:
    """Write a model's predictions for every row of input files. An actor pool on the Ray cluster runs the model.

    \b
    Example:
      python -m orchestrator predict jobs/gpt-tiny.yaml -i corpus.jsonl -o predictions/ --format jsonl
    """
    from orchestrator import runtime  # ray, torch: only now
    from orchestrator.inference import batch

    files = batch.check_inputs([str(path) for path in inputs])  # mistakes first, before connecting
    batch.check_output(output, output_format)
    model_dir = batch.resolve_model(model, None)
    print(f"connected to {runtime.connect(address)}")
    batch.predict(model_dir, files, output, output_format, text_field, batch_size=batch_size)


@app.command()
def evaluate(
    model: ModelSpec,
    inputs: Inputs,
    output_json: Annotated[Path | None, typer.Option(metavar="FILE", help="Also write the metrics to this JSON file.")] = None,
    batch_size: BatchSize = 32,
    address: RayAddress = None,
) -> None:
    """Score a model on labelled input files. The metrics are those its task reports in training.

    \b
    Example:
      python -m orchestrator evaluate runs:/<run_id>/model -i data/val.jsonl --output-json metrics.json
    """
    from orchestrator import runtime  # ray, torch: only now
    from orchestrator.inference import batch

    files = batch.check_inputs([str(path) for path in inputs])  # mistakes first, before connecting
    if output_json and (os.path.isdir(output_json) or not os.path.isdir(output_json.absolute().parent)):
        raise UserError(f"--output-json: {output_json} cannot be written (a directory, or in a directory that does not exist)")
    model_dir = batch.resolve_model(model, None)
    print(f"connected to {runtime.connect(address)}")
    metrics = batch.evaluate(model_dir, files, batch_size=batch_size)
    if output_json:
        output_json.write_text(json.dumps(metrics, indent=2) + "\n")
        print(f"metrics: {output_json}")


@app.command()
def export(
    model: ModelSpec,
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="Where to write it: a new or empty directory.", show_default=False)],
) -> None:
    """Copy a trained model's Hugging Face directory to DIR.

    The weights, tokenizer and model card (a LoRA model's adapter in adapter/): for model.pretrained of another job,
    or transformers' from_pretrained.

    \b
    Example:
      python -m orchestrator export jobs/gpt-tiny.yaml ~/.cache/orchestrator/models/gpt-tiny
    """
    from orchestrator.inference import batch

    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise UserError(f"DIR: {directory} exists and is not an empty directory")
    source = batch.resolve_model(model, None)
    shutil.copytree(source, directory, dirs_exist_ok=True)
    print(f"model exported to {directory}")


@app.command()
def schema(
    markdown: Annotated[bool, typer.Option("--markdown", help="The reference table of every key instead (the one in docs/jobs.md).")] = False,
) -> None:
    """Print the JSON schema of job files (for editors). With --markdown: the job file reference.

    \b
    Example:
      python -m orchestrator schema --markdown
    """
    if markdown:
        from orchestrator.config.reference import markdown as reference

        print(reference(), end="")
        return
    print(json.dumps(JobConfig.model_json_schema(), indent=2))


def gpu_memory() -> int:
    """The local GPU's memory, which torch reads (imported only here: seconds)."""
    import torch

    if not torch.cuda.is_available():
        raise UserError("--memory-per-worker: this machine has no GPU to read a worker's memory from; give it in GiB")
    return torch.cuda.get_device_properties(0).total_memory


def readable_bytes(value: float) -> str:
    return f"{value / 2**30:.2f} GiB" if value >= 2**30 else f"{value / 2**20:.1f} MiB"


@app.command()
def plan(
    job_file: JobFile,
    overrides: Overrides = [],
    memory_per_worker: Annotated[
        float | None,
        typer.Option(
            metavar="GIB",
            help="GiB each worker may use; default: the local GPU's memory (GPU jobs), or this machine's memory shared by the workers.",
        ),
    ] = None,
) -> None:
    """Estimate a job's memory per worker, before running it. Prints the model's parameters and, for each ZeRO stage
    and offload choice, memory per worker (ZeRO paper, DeepSpeed's estimators, activations) and whether it fits; then
    the job's own choice, and which option to use.

    \b
    Example:
      python -m orchestrator plan jobs/gpt-tiny.yaml --set scaling.num_workers=4
    """
    if memory_per_worker is not None and not 0 < memory_per_worker < math.inf:
        raise UserError(f"--memory-per-worker: GiB, a positive number (got {memory_per_worker})")
    job = checked_job(job_file, overrides)
    import psutil
    from rich.console import Console
    from rich.table import Table

    from orchestrator.train import plan as planning

    if memory_per_worker is not None:
        available = memory_per_worker * 2**30
    elif job.scaling.use_gpu:
        available = gpu_memory()
    else:
        available = psutil.virtual_memory().total / job.scaling.num_workers
    size = planning.model_size(job)
    options, choice = planning.plan(job, size, available)
    workers, device = job.scaling.num_workers, "GPU" if job.scaling.use_gpu else "CPU"
    trainable = f", {size.trainable:,} of them LoRA's, which train ({size.trainable / size.parameters:.2%})" if size.trainable else ""
    print(
        f"{job.model.family}: {size.parameters:,} parameters{trainable} (largest layer {size.largest_layer:,}); {workers} {device} workers, "
        f"micro batch {job.train.micro_batch_size} x {job.data.seq_len} tokens, {job.deepspeed.precision}"
    )
    split = job.parallelism
    if split.layout != "data":
        print(
            f"data x tensor x pipeline = {job.data_parallel_size} x {split.tensor} x {split.pipeline}: at most "
            f"{size.worker_parameters:,} parameters per worker ({size.worker_parameters / size.parameters:.0%}), "
            f"ZeRO over {job.data_parallel_size} replica(s), stages 0-{split.highest_zero_stage}"
        )
    print(f"activations per worker: {readable_bytes(planning.activation_bytes(job, size))}; memory per worker: {readable_bytes(available)}")
    table = Table("option", "model states (ZeRO paper)", "DeepSpeed estimate: device", "DeepSpeed estimate: host", "needed per worker", "fits")
    for option in options:
        cells = (option.paper_bytes, option.deepspeed_device_bytes, option.deepspeed_host_bytes, option.needed_bytes)
        table.add_row(option.name, *(readable_bytes(value) for value in cells), "yes" if option.fits else "no")
    Console(width=160).print(table)
    if not job.scaling.use_gpu:
        print("On CPU, offloaded states stay in the same memory: needed = ZeRO paper + activations + the worker process.")
    own = planning.option_plan(job, planning.job_option(job), size, available)
    print(f"your job: {own.name} ({'fits' if own.fits else 'does not fit'}, {readable_bytes(own.needed_bytes)} per worker)")
    print(
        f"recommended: {choice} (the fitting option with the least communication)"
        if choice
        else "recommended: none fits; add workers, lower train.micro_batch_size or data.seq_len, or use a machine with more memory"
    )
