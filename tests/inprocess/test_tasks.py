"""Every task models/tasks.py registers, through the whole worker loop in this process (local_mode.py), each on a
small random-init model of another family: a few steps whose loss is finite and falls, the task's evaluation metrics
before and after training, the last evaluation's predictions kept for a person, and the exported model."""

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import OBJECTS, SUBJECTS, VERBS, tiny_job, write_jsonl, write_question_corpus, write_translation_corpus
from mlflow.tracking import MlflowClient

from orchestrator.config.load import validate
from orchestrator.models.tasks import TASKS

from .local_mode import prepared_in_memory, train_in_process

STEPS = 8
ANIMALS = ("the cat", "a dog", "the bird")


def write_labelled_corpus(directory: Path, documents: int = 600, seed: int = 0) -> Path:
    """Sentences labelled by who does something: an animal or a person."""
    rng = random.Random(seed)
    subjects = (rng.choice(SUBJECTS) for _ in range(documents))
    records = ({"text": f"{subject} {rng.choice(VERBS)} {rng.choice(OBJECTS)}.", "who": "animal" if subject in ANIMALS else "person"} for subject in subjects)
    return write_jsonl(directory / "labelled.jsonl", records)


def small(family: str, **dims) -> dict:
    return {"family": family, "dims": {"layers": 2, "hidden": 64, "heads": 2, "ffn": 128} | dims}


@dataclass
class TaskJob:
    """A task's job: its data, a model of a family that can learn it, and what its last evaluation leaves in the run."""

    data: Callable[[Path, Path], Path]  # (a directory, the corpus fixture) -> the job's data file
    model: dict
    sections: dict = field(default_factory=dict)  # what else the job sets, section by section
    predictions: set[str] = field(default_factory=set)


TASK_JOBS = {
    "causal_lm": TaskJob(lambda tmp, corpus: corpus, small("llama", kv_heads=1, max_positions=64), {"train": {"log_every": 3}}),
    "sequence_classification": TaskJob(
        lambda tmp, corpus: write_labelled_corpus(tmp),
        small("bert", max_positions=64),
        {"data": {"label_field": "who", "val_fraction": 0.1}, "train": {"optimizer": {"name": "adamw", "lr": 1e-3}}},
        {"plots/confusion_matrix.png", "plots/confusion_matrix.csv"},
    ),
    "seq2seq": TaskJob(
        lambda tmp, corpus: write_translation_corpus(tmp),
        small("t5"),
        {"data": {"text_field": "en", "target_field": "fr"}, "train": {"eval_batches": 1}},  # generation is slow
        {"eval/generated.tsv"},
    ),
    "sft": TaskJob(
        lambda tmp, corpus: write_translation_corpus(tmp),
        small("gpt2", max_positions=64),
        {"data": {"text_field": "en", "target_field": "fr", "val_fraction": 0.05}, "train": {"eval_batches": 1}},
        {"eval/generated.tsv"},
    ),
    "question_answering": TaskJob(
        lambda tmp, corpus: write_question_corpus(tmp),
        small("bert", max_positions=64),
        {
            "data": {"text_field": "context", "question_field": "question", "answer_field": "answer", "seq_len": 48, "val_fraction": 0.1},
            "train": {"optimizer": {"name": "adamw", "lr": 1e-3}},
        },
        {"eval/answers.tsv"},
    ),
}


def test_every_registered_task_is_trained_here():
    assert TASK_JOBS.keys() == TASKS.keys()


@pytest.mark.parametrize("task", TASK_JOBS)
def test_a_task_trains_evaluates_and_exports(task, local_ray, corpus, tracking_uri, tmp_path):
    spec = TASK_JOBS[task]
    job = validate(
        tiny_job(
            spec.data(tmp_path / "data", corpus),
            task=task,
            model=spec.model,
            data=spec.sections.get("data", {}),
            train={"max_steps": STEPS, "eval_every": STEPS, "micro_batch_size": 8, **spec.sections.get("train", {})},
            scaling={"num_workers": 1},
            checkpoint={"every_steps": STEPS},
            tracking={"uri": tracking_uri, "experiment": "tasks"},
        )
    )
    run = train_in_process(job, prepared_in_memory(job, tmp_path / "data"), tmp_path, task.replace("_", "-"))

    losses = run.history(tracking_uri, "train/loss")
    every = job.train.log_every
    assert sorted(losses) == [step for step in range(1, STEPS + 1) if step % every == 0 or step == STEPS]
    assert all(math.isfinite(loss) for loss in losses.values()) and losses[STEPS] < losses[min(losses)], losses
    evaluated = [name for name in TASKS[task].reported_metrics if name.startswith("eval/")]
    assert {name: sorted(run.history(tracking_uri, name)) for name in evaluated} == {name: [0, STEPS] for name in evaluated}
    artifacts = artifact_paths(MlflowClient(tracking_uri), run.run_id)
    assert spec.predictions | {"model/MLmodel", "model/artifacts/hf/orchestrator.json"} <= artifacts, artifacts


def artifact_paths(client: MlflowClient, run_id: str, path: str = "") -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return found
