"""Batch inference with an exported model (train/loop.py's `export`): predictions written to files, or metrics.

Rows come from the training reader (one Ray task per file; unreadable lines are counted and skipped), and an actor
pool of `Predictor`s runs the model, each actor loading it once. Inputs are tokenized as in training (data/encode.py)
but padded per batch, not to seq_len.
"""

import json
import os
import time
from pathlib import Path

import mlflow.artifacts
import numpy as np
import ray
import torch
import transformers
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from orchestrator.config import load_job
from orchestrator.config.errors import UserError
from orchestrator.data.encode import IGNORED_LABEL
from orchestrator.data.read import file_format, read_rows, row_fields
from orchestrator.data.tokenizers import separator_id
from orchestrator.models.tasks import TASKS
from orchestrator.tracking.run import tracking_uri as job_tracking_uri

MODEL_CARD = "orchestrator.json"  # written beside the model by train/loop.py
MLFLOW_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")
OUTPUT_FORMATS = ("parquet", "jsonl")
CAUSAL_NEW_TOKENS = 32  # continuation length of causal_lm predictions
CPUS_PER_ACTOR = 1
MAX_ACTORS = 4  # each holds a whole model: more would only multiply memory on a small cluster


# --- which model ---------------------------------------------------------------------------------------


def read_card(model_dir: str | Path) -> dict:
    return json.loads((Path(model_dir) / MODEL_CARD).read_text())


def resolve_model(spec: str, tracking_uri: str | None) -> Path:
    """The exported model directory that a local path, an MLflow artifact URI or a job file (its latest run) names."""
    path = Path(spec).expanduser()
    if (path / MODEL_CARD).is_file():
        return path
    if spec.startswith(MLFLOW_SCHEMES):
        # The default of training jobs (tracking/run.py), so that a run logged by `orchestrator train` is found.
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{os.path.abspath('mlflow.db')}"
        return _download(spec, uri)
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        return _latest_job_model(path)
    raise UserError(
        f"model: {spec!r} is not an exported model directory (with {MODEL_CARD}), an MLflow URI (runs:/<run_id>/model) "
        "or a job YAML file"
    )


def _download(uri: str, tracking_uri: str) -> Path:
    try:
        directory = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, tracking_uri=tracking_uri))
    except MlflowException as err:
        raise UserError(f"model: cannot download {uri} from {tracking_uri}: {err.message.splitlines()[0]}") from None
    if not (directory / MODEL_CARD).is_file():
        raise UserError(f"model: {uri} holds no exported model ({MODEL_CARD} is missing)")
    return directory


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
    run = next((run for run in runs if any(a.path == "model" for a in client.list_artifacts(run.info.run_id))), None)
    if run is None:
        raise UserError(f"model: no finished run with a model in experiment {experiment_name!r} of {uri} ({job_file})")
    print(f"model of run {run.info.run_name} ({run.info.run_id}) in experiment {experiment_name!r}")
    return _download(f"runs:/{run.info.run_id}/model", uri)


# --- the actors ----------------------------------------------------------------------------------------


def _pad(rows: list[list[int]], pad: int, left: bool = False) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask of rows padded to the longest; decoder-only generation pads on the left."""
    width = max(map(len, rows))
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        input_ids[i, span] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, span] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _row_losses(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """Mean cross-entropy of each row over its scored (not ignored) positions."""
    losses = torch.nn.functional.cross_entropy(
        logits.float().transpose(1, 2), labels, ignore_index=IGNORED_LABEL, reduction="none"
    )
    return (losses.sum(1) / (labels != IGNORED_LABEL).sum(1).clamp(min=1)).numpy()


class Predictor:
    """One model per actor of a `map_batches` pool. Predict mode returns source, text and the prediction columns;
    evaluate mode returns what the task's metrics need: predictions, the true label index or reference text, and
    each row's loss."""

    def __init__(self, model_dir: str, evaluate: bool = False, cpus: int = CPUS_PER_ACTOR):
        torch.set_num_threads(cpus)  # torch would otherwise take every core of the node, which the other actors share
        card = read_card(model_dir)
        self.task, self.seq_len, self.evaluate = card["task"], card["seq_len"], evaluate
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
        self.separator = separator_id(self.tokenizer)
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.separator
        auto_class = getattr(transformers, TASKS[self.task].auto_class)
        # fp32 whatever the export's dtype: half-precision matmuls are slow or missing on CPU.
        self.model = auto_class.from_pretrained(model_dir, dtype=torch.float32).eval()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [str(text) for text in batch["text"]]
        run = {"sequence_classification": self._classify, "seq2seq": self._seq2seq, "causal_lm": self._causal_lm}
        with torch.no_grad():
            columns = run[self.task](texts, batch)
        return columns if self.evaluate else {"source": batch["source"], "text": batch["text"], **columns}

    def _ended(self, texts: list[str]) -> list[list[int]]:
        """Token ids ended by the separator and cut to seq_len, as encode_seq2seq has them."""
        encoded = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [[*ids[: self.seq_len - 1], self.separator] for ids in encoded]

    def _classify(self, texts: list[str], batch: dict) -> dict:
        # The tokenizer's own template ([CLS] text [SEP] for WordPiece), as in encode_classification.
        inputs = _pad(self.tokenizer(texts, truncation=True, max_length=self.seq_len)["input_ids"], self.pad)
        logits = self.model(**inputs).logits.float()
        score, index = logits.softmax(-1).max(-1)
        predicted = [self.model.config.id2label[i] for i in index.tolist()]
        columns = {"predicted": np.array(predicted), "score": score.numpy()}
        if self.evaluate:
            labels = torch.tensor([self.model.config.label2id[label] for label in batch["label"]])
            loss = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
            columns |= {"label": labels.numpy(), "loss": loss.numpy()}
        return columns

    def _seq2seq(self, texts: list[str], batch: dict) -> dict:
        inputs = _pad(self._ended(texts), self.pad)
        generated = self.model.generate(**inputs, max_new_tokens=self.seq_len, do_sample=False, num_beams=1)
        columns = {"generated": np.array(self.tokenizer.batch_decode(generated, skip_special_tokens=True))}
        if self.evaluate:
            references = [str(target) for target in batch["target"]]
            labels = _pad(self._ended(references), IGNORED_LABEL)["input_ids"]
            loss = _row_losses(self.model(**inputs, labels=labels).logits, labels)
            columns |= {"reference": np.array(references), "loss": loss}
        return columns

    def _causal_lm(self, texts: list[str], batch: dict) -> dict:
        encoded = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        if self.evaluate:  # perplexity needs the loss only: no generation
            # As packed in training: after a separator and ended by one, so even an empty text has a token to score.
            inputs = _pad([[self.separator, *ids[: self.seq_len - 2], self.separator] for ids in encoded], self.pad)
            labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, IGNORED_LABEL)
            return {"loss": _row_losses(self.model(**inputs).logits[:, :-1], labels[:, 1:])}
        # In training a document follows a separator; the prompt keeps its end, leaving positions for the continuation.
        positions = getattr(self.model.config, "max_position_embeddings", None) or self.seq_len + CAUSAL_NEW_TOKENS
        keep = max(1, min(self.seq_len, positions - CAUSAL_NEW_TOKENS))
        prompts = [[self.separator, *ids][-keep:] for ids in encoded]
        inputs = _pad(prompts, self.pad, left=True)
        generated = self.model.generate(
            **inputs, max_new_tokens=CAUSAL_NEW_TOKENS, do_sample=False, num_beams=1, pad_token_id=self.pad
        )
        continuations = generated[:, inputs["input_ids"].shape[1] :]
        return {"generated": np.array(self.tokenizer.batch_decode(continuations, skip_special_tokens=True))}


# --- the jobs ------------------------------------------------------------------------------------------


def _readable_rows(
    inputs: list[str], card: dict, text_field: str | None, evaluate: bool, batch_size: int
) -> ray.data.Dataset:
    """The rows the reader could parse, in blocks of a batch: the reader makes one block per file, and small blocks
    give every actor a share of even one large file. Materialized: counted once, and read and split before the
    actors hold the CPUs (tasks upstream of them could not start)."""
    local = [path for path in inputs if "://" not in path]
    if missing := [path for path in local if not os.path.exists(path)]:
        raise UserError(f"--input: no such file: {', '.join(missing)}")
    files = [path if "://" in path else os.path.abspath(path) for path in inputs]
    fields = row_fields(
        text_field or card["text_field"],
        card["label_field"] if evaluate else None,
        card["target_field"] if evaluate else None,
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
    if fmt not in OUTPUT_FORMATS:
        raise UserError(f"--format: one of {', '.join(OUTPUT_FORMATS)} (got {fmt!r})")
    start = time.perf_counter()
    rows = _readable_rows(inputs, read_card(model_dir), text_field, False, batch_size)
    predictions = _predictions(rows, model_dir, False, concurrency, batch_size)
    write = predictions.write_parquet if fmt == "parquet" else predictions.write_json
    write(str(Path(output_dir).absolute()))
    count, seconds = rows.count(), time.perf_counter() - start
    print(f"{count} rows in {seconds:.1f} s ({count / seconds:.1f} rows/s) -> {output_dir}")
    return {"rows": count, "seconds": seconds, "rows_per_s": count / seconds}


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
    predictions = {}  # causal_lm: perplexity comes from the loss alone
    if task == "sequence_classification":
        predicted = [label2id[name] for name in results["predicted"]]
        predictions = {"predicted": predicted, "label": results["label"].tolist()}
    elif task == "seq2seq":
        predictions = {"hypothesis": results["generated"].tolist(), "reference": results["reference"].tolist()}
    metrics = {
        name: float(value)
        for name, value in TASKS[task].metrics(float(results["loss"].mean()), predictions, label_names).items()
    }
    print(f"{len(results)} rows: " + ", ".join(f"{name} {value:.4f}" for name, value in metrics.items()))
    return metrics
