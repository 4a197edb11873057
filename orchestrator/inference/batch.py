"""Batch inference with an exported model (train/export.py): predictions written to files, or metrics.

Rows come from the training reader (one Ray task per file; unreadable lines are counted and skipped), and an actor
pool of `Predictor`s (inference/predictor.py) runs the model, each actor loading it once.
"""

import os
import time
from collections.abc import Callable
from pathlib import Path

import mlflow.artifacts
import pandas as pd
import ray
import transformers
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.utils.models import get_model_name_and_version
from mlflow.tracking import MlflowClient

from orchestrator.config import load_job
from orchestrator.config.errors import UserError
from orchestrator.data.read import file_format, read_rows, row_fields
from orchestrator.inference.predictor import MODEL_CARD, Predictor, read_card
from orchestrator.models.tasks import TASKS
from orchestrator.tracking.model import ARTIFACT_PATH, hf_directory
from orchestrator.tracking.run import tracking_uri as job_tracking_uri

MLMODEL = "MLmodel"  # the file that marks an MLflow model directory
MLFLOW_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")
OUTPUT_FORMATS = ("parquet", "jsonl")
CPUS_PER_ACTOR = 1
MAX_ACTORS = 4  # each holds a whole model: more would only multiply memory on a small cluster


# --- which model ---------------------------------------------------------------------------------------


def resolve_model(spec: str, tracking_uri: str | None) -> Path:
    """The exported Hugging Face directory that a local directory, an MLflow URI (runs:/<run_id>/model,
    models:/<name>/<version>) or a job file (its latest run) names."""
    path = Path(spec).expanduser()
    # os.path's checks answer False for a name the system refuses (too long, a NUL byte); Path's raise
    if os.path.isdir(path):
        return _hf_directory(path, spec)
    if spec.startswith(MLFLOW_SCHEMES):
        # The default of training jobs (tracking/run.py), so that a run logged by `orchestrator train` is found.
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{os.path.abspath('mlflow.db')}"
        return _download(spec, uri)
    if os.path.isfile(path) and path.suffix in (".yaml", ".yml"):
        return _latest_job_model(path)
    raise UserError(f"model: {spec!r} is not a model directory, an MLflow URI (runs:/<run_id>/model, models:/<name>/<version>) or a job YAML file")


def _hf_directory(directory: Path, spec: str) -> Path:
    """The directory itself (a Hugging Face export with its card), or the one inside an MLflow model."""
    if (directory / MLMODEL).is_file():
        directory = hf_directory(directory)
    if not (directory / MODEL_CARD).is_file():
        raise UserError(f"model: {spec} holds no model exported by orchestrator ({MODEL_CARD} is missing)")
    return directory


def _download(uri: str, tracking_uri: str) -> Path:
    try:
        if uri.startswith("models:/"):
            uri = registered_model_source(uri, tracking_uri)
        directory = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, tracking_uri=tracking_uri))
    except MlflowException as err:
        raise UserError(f"model: cannot download {uri} from {tracking_uri}: {err.message.splitlines()[0]}") from None
    return _hf_directory(directory, uri)


def registered_model_source(uri: str, tracking_uri: str) -> str:
    """Where the model version a models:/ URI names keeps its files, looked up in the registry of `tracking_uri`
    (MLflow's download would look it up in the process-wide registry URI, whatever registry_uri it is given)."""
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    name_and_version = get_model_name_and_version(client, uri)
    if len(name_and_version) == 1:  # a logged model's id (models:/m-...): not in the registry
        return uri
    return client.get_model_version_download_uri(*name_and_version)


def _latest_job_model(job_file: Path) -> Path:
    job = load_job(job_file)
    uri, experiment_name = job_tracking_uri(job), job.tracking.experiment
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(experiment_name)
    query = "attributes.status = 'FINISHED'"
    if job.tracking.run_name:
        query += f" and tags.`orchestrator.run_name` = '{job.tracking.run_name}'"
    order = ["attributes.start_time DESC"]
    runs = client.search_runs([experiment.experiment_id], query, order_by=order) if experiment else []
    # A run that failed to export, or a sweep's parent, has no model.
    run = next((run for run in runs if any(a.path == ARTIFACT_PATH for a in client.list_artifacts(run.info.run_id))), None)
    if run is None:
        raise UserError(f"model: no finished run with a model in experiment {experiment_name!r} of {uri} ({job_file})")
    print(f"model of run {run.info.run_name} ({run.info.run_id}) in experiment {experiment_name!r}")
    return _download(f"runs:/{run.info.run_id}/{ARTIFACT_PATH}", uri)


# --- what the command asks for, checked before anything connects ---------------------------------------


def check_inputs(inputs: list[str]) -> list[str]:
    """The input files, local ones made absolute; a missing local one is a UserError."""
    if missing := [path for path in inputs if "://" not in path and not os.path.exists(path)]:
        raise UserError(f"--input: no such file: {', '.join(missing)}")
    return [path if "://" in path else os.path.abspath(path) for path in inputs]


def check_output(output_dir: Path, fmt: str) -> None:
    if fmt not in OUTPUT_FORMATS:
        raise UserError(f"--format: one of {', '.join(OUTPUT_FORMATS)} (got {fmt!r})")
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise UserError(f"--output: {output_dir} is a file, not a directory")


# --- the jobs ------------------------------------------------------------------------------------------


def _readable_rows(inputs: list[str], card: dict, text_field: str | None, evaluate: bool, batch_size: int) -> ray.data.Dataset:
    """The rows the reader could parse, in blocks of a batch: the reader makes one block per file, and small blocks
    give every actor a share of even one large file. Materialized: counted once, and read and split before the
    actors hold the CPUs (tasks upstream of them could not start)."""
    files = check_inputs(inputs)
    fields = row_fields(
        text_field or card["text_field"],
        card["label_field"] if evaluate else None,
        card["target_field"] if evaluate else None,
        question_field=card.get("question_field"),  # .get: the cards of models exported before question answering lack these
        answer_field=card.get("answer_field") if evaluate else None,
        answer_start_field=card.get("answer_start_field") if evaluate else None,
    )
    rows = read_rows(files, file_format("auto", files, option="--input"), fields).materialize()
    readable = rows.filter(expr="stage == ''").repartition(target_num_rows_per_block=batch_size).materialize()
    if skipped := rows.count() - readable.count():
        print(f"skipped {skipped} unreadable rows")
    return readable


def _predictions(rows: ray.data.Dataset, model_dir: Path, evaluate: bool, concurrency: int | None, batch_size: int):
    if concurrency is None:
        # One CPU is left to the write tasks downstream: with every CPU held by an actor, the pool's output piles up
        # in the object store until the whole pool is done.
        concurrency = min(MAX_ACTORS, max(1, (int(ray.cluster_resources().get("CPU", 1)) - 1) // CPUS_PER_ACTOR))
    return rows.map_batches(
        Predictor,
        fn_constructor_kwargs={"model_dir": str(model_dir), "evaluate": evaluate, "cpus": CPUS_PER_ACTOR},
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_cpus=CPUS_PER_ACTOR,
        batch_size=batch_size,
        batch_format="numpy",
    )


def predict(
    model_dir: Path,
    inputs: list[str],
    output_dir: Path,
    fmt: str = "parquet",
    text_field: str | None = None,
    concurrency: int | None = None,
    batch_size: int = 32,
) -> dict[str, float]:
    """Writes source, text and the prediction columns of every readable row to output_dir; returns the throughput."""
    check_output(output_dir, fmt)
    start = time.perf_counter()
    rows = _readable_rows(inputs, read_card(model_dir), text_field, False, batch_size)
    predictions = _predictions(rows, model_dir, False, concurrency, batch_size)
    write = predictions.write_parquet if fmt == "parquet" else predictions.write_json
    write(str(Path(output_dir).absolute()))
    count, seconds = rows.count(), time.perf_counter() - start
    print(f"{count} rows in {seconds:.1f} s ({count / seconds:.1f} rows/s) -> {output_dir}")
    return {"rows": count, "seconds": seconds, "rows_per_s": count / seconds}


def _generated(results: pd.DataFrame, label2id: dict) -> dict[str, list]:
    return {"hypothesis": results["generated"].tolist(), "reference": results["reference"].tolist()}


# The predictor's evaluate columns -> what the task's metrics (Task.metrics, as in training) read.
METRIC_INPUTS: dict[str, Callable[[pd.DataFrame, dict], dict[str, list]]] = {
    "causal_lm": lambda results, label2id: {},  # perplexity comes from the loss alone
    "sequence_classification": lambda results, label2id: {
        "predicted": [label2id[name] for name in results["predicted"]],
        "label": results["label"].tolist(),
    },
    "seq2seq": _generated,
    "sft": _generated,
    "question_answering": lambda results, label2id: {
        "predicted_answer": results["answer"].tolist(),
        "answer": results["reference"].tolist(),
        "baseline_answer": results["baseline"].tolist(),
    },
}


def evaluate(
    model_dir: Path,
    inputs: list[str],
    text_field: str | None = None,
    concurrency: int | None = None,
    batch_size: int = 32,
) -> dict[str, float]:
    """The task's metrics (those training reports as eval/...) over every readable row of the inputs."""
    card = read_card(model_dir)
    task = card["task"]
    rows = _readable_rows(inputs, card, text_field, True, batch_size)
    label_names, label2id = [], {}
    if task == "sequence_classification":
        config = transformers.AutoConfig.from_pretrained(model_dir)
        label_names, label2id = [config.id2label[i] for i in range(len(config.id2label))], config.label2id
        known = rows.filter(lambda row: row["label"] in label2id).materialize()
        if unknown := rows.count() - known.count():
            print(f"skipped {unknown} rows with a label the model does not know (it knows {', '.join(label_names)})")
        rows = known
    if rows.count() == 0:
        raise UserError("--input: no rows to evaluate")
    # Predictions are small next to the model work: the driver takes them all.
    results = _predictions(rows, model_dir, True, concurrency, batch_size).to_pandas()
    predictions = METRIC_INPUTS[task](results, label2id)
    metrics = {name: float(value) for name, value in TASKS[task].metrics(float(results["loss"].mean()), predictions, label_names).items()}
    print(f"{len(results)} rows: " + ", ".join(f"{name} {value:.4f}" for name, value in metrics.items()))
    return metrics
