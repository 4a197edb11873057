"""The final model: gathered from every rank however the layout split it, written in Hugging Face format, then (rank
0's reporter) logged into the MLflow run as an MLflow model (tracking/model.py) holding the weights, tokenizer and the
task it was trained for (what `predict` needs), registered, beside the training curves.

mlflow.pyfunc and matplotlib are imported by the functions that use them: they would add a second to every worker's
start, and only rank 0 needs them, at the end.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from mlflow.entities.model_registry import ModelVersion

from orchestrator.config.job import JobConfig
from orchestrator.inference.predictor import MODEL_CARD
from orchestrator.models.build import TORCH_DTYPES
from orchestrator.tracking.metrics import MetricsLogger, deliver
from orchestrator.train.engine import export_hf_model
from orchestrator.train.worker import Worker


@contextmanager
def exported_model(worker: Worker) -> Iterator[str]:
    """Every rank takes part in gathering the model; rank 0 writes it into the directory this yields (removed after:
    rank 0's reporter logs it from there)."""
    with tempfile.TemporaryDirectory(prefix="orchestrator-model-", ignore_cleanup_errors=True) as directory:
        hf_dir = os.path.join(directory, "hf")
        export_hf_model(worker.engine, worker.layout, hf_dir, TORCH_DTYPES[worker.job.model.dtype], is_writer=worker.rank == 0)
        yield hf_dir


def log_model(metrics: MetricsLogger, worker: Worker, hf_dir: str) -> ModelVersion | None:
    """The Hugging Face directory, completed with the tokenizer and the model card, as the run's MLflow model; its
    version in the Model Registry when the plan names one."""
    from orchestrator.tracking.model import ARTIFACT_PATH, register, save_model

    worker.tokenizer.save_pretrained(hf_dir)
    write_model_card(worker.job, hf_dir)
    with tempfile.TemporaryDirectory(prefix="orchestrator-mlflow-model-") as directory:
        model_dir = os.path.join(directory, "mlflow_model")
        save_model(hf_dir, model_dir, worker.job.task, worker.plan.example_texts)
        deliver(lambda: metrics.client.log_artifacts(metrics.run_id, model_dir, ARTIFACT_PATH), "the model")
    if name := worker.plan.registered_model:
        return deliver(lambda: register(metrics.client, metrics.run_id, name), "the registration")
    return None


def log_training_curves(metrics: MetricsLogger) -> None:
    from orchestrator.tracking.plots import training_curves

    with tempfile.TemporaryDirectory(prefix="orchestrator-plots-") as directory:
        plot = os.path.join(directory, "training_curves.png")
        training_curves(metrics.history, plot)
        deliver(lambda: metrics.client.log_artifact(metrics.run_id, plot, "plots"), "the training curves")


def write_model_card(job: JobConfig, directory: str) -> None:
    card = {"task": job.task, "seq_len": job.data.seq_len, "text_field": job.data.text_field}
    card |= {"label_field": job.data.label_field, "target_field": job.data.target_field}
    card |= {"question_field": job.data.question_field, "answer_field": job.data.answer_field, "answer_start_field": job.data.answer_start_field}
    with open(os.path.join(directory, MODEL_CARD), "w") as out:
        json.dump(card, out, indent=2)
