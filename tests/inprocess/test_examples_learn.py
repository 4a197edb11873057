"""The example jobs of the classification, translation and question-answering tasks learn: each job file, shortened
with overrides, runs through the whole worker loop in this process (local_mode.py) on its real data and model. The
classifier (the pretrained MiniLM on Debian's fortunes) beats the majority-class baseline, and its confusion matrix
names the fortunes files; the translator's BLEU beats the untrained model's; the question answerer (the pretrained
MiniLM on questions about Debian's English-French dictionary) beats the best-overlap-sentence baseline. (Causal LM: tests/integration/test_training.py checks that perplexity falls; each task's metrics, plots
and export: test_tasks.py; the data report each run logs: tests/unit/test_data_stages.py; the example jobs through
`ray job submit`: the quickstart's and the job API's tests in tests/integration.)"""

import random
from pathlib import Path

import pytest
from helpers import REPO, write_translation_corpus
from mlflow.tracking import MlflowClient

from orchestrator.config.job import JobConfig
from orchestrator.config.load import load_job
from orchestrator.data.read import resolve_data_files

from .local_mode import prepared_in_memory, train_in_process

# Minutes of training, not seconds: run with the cluster tests.
pytestmark = pytest.mark.integration


def example(name: str, tracking_uri: str, tmp: Path, **overrides) -> JobConfig:
    """jobs/<name>.yaml on one worker (of both CPUs here); `overrides` as `--set` gives them."""
    overrides = {"scaling.num_workers": 1, "checkpoint.dir": str(tmp / "runs"), "tracking.uri": tracking_uri} | overrides
    return load_job(REPO / "jobs" / f"{name}.yaml", [f"{key}={value}" for key, value in overrides.items()])


def last(history: dict[int, float]) -> tuple[int, float]:
    return max(history.items())


def test_classification_fine_tunes_minilm_beyond_the_majority_baseline(local_ray, tracking_uri, tmp_path):
    fortunes = resolve_data_files(load_job(REPO / "jobs/fortunes-classify.yaml"))
    rows = [line for path in fortunes for line in Path(path).read_text().splitlines()]
    random.Random(0).shuffle(rows)  # one category after another otherwise: the in-memory data is not shuffled
    (tmp_path / "fortunes.jsonl").write_text("\n".join(rows) + "\n")
    shorter = {"train.epochs": "null", "train.max_steps": 40, "train.eval_every": 40}
    job = example("fortunes-classify", tracking_uri, tmp_path, **shorter, **{"data.paths": f"[{tmp_path / 'fortunes.jsonl'}]"})
    run = train_in_process(job, prepared_in_memory(job, tmp_path / "data"), tmp_path, "classify", cpus=2)

    step, accuracy = last(run.history(tracking_uri, "eval/accuracy"))
    _, majority = last(run.history(tracking_uri, "eval/majority_accuracy"))
    assert step == 40 and accuracy > majority + 0.1, (accuracy, majority)
    matrix = MlflowClient(tracking_uri).download_artifacts(run.run_id, "plots/confusion_matrix.csv", str(tmp_path))
    assert open(matrix).readline().strip().split(",")[1:] == ["computers", "definitions", "love", "politics", "science", "sports"]


def test_translation_bleu_beats_the_untrained_model(local_ray, tracking_uri, tmp_path):
    corpus = write_translation_corpus(tmp_path / "data")
    overrides = {"data.paths": f"[{corpus}]", "data.tokenizer.vocab_size": 300, "data.val_fraction": 0.1}
    overrides |= {"train.max_steps": 150, "train.eval_every": 75, "train.micro_batch_size": 64}  # 2 workers x 32
    job = example("translate-eng-fra", tracking_uri, tmp_path, **overrides)
    run = train_in_process(job, prepared_in_memory(job, tmp_path / "data"), tmp_path, "translate", cpus=2)

    bleu = run.history(tracking_uri, "eval/bleu")
    assert sorted(bleu) == [0, 75, 150]
    assert bleu[150] > bleu[0] + 20, bleu
    for key in ("eval/chrf", "eval/rougeL"):
        scores = run.history(tracking_uri, key)
        assert scores[150] > scores[0], (key, scores)


def test_question_answering_beats_the_best_overlap_sentence(local_ray, tracking_uri, tmp_path):
    # The loss sits at about 2.2 (the answer is one of the context's 8 translations) until, after a number of steps
    # that varies with the seed, the model learns which. At micro batch 8 and rate 3e-4, seeds 0-4 all pass 96 exact
    # match by step 150; at step 100, seed 1 had 46 here, and 11 with the job's batch of 16 and rate of 1e-4.
    steps = 150
    overrides = {"train.max_steps": steps, "train.eval_every": steps, "train.micro_batch_size": 8, "train.optimizer.lr": 3e-4}
    # its longest question and context are 83 tokens: 96 pads less than the job's 128
    overrides |= {"train.schedule.warmup_steps": 10, "data.seq_len": 96}
    job = example("qa-minilm", tracking_uri, tmp_path, **overrides)
    run = train_in_process(job, prepared_in_memory(job, tmp_path / "data"), tmp_path, "qa", cpus=2)

    names = ("exact_match", "f1", "baseline_exact_match", "baseline_f1")
    scores = {name: last(run.history(tracking_uri, f"eval/{name}")) for name in names}
    assert {step for step, _ in scores.values()} == {steps}, scores
    score = {name: value for name, (_, value) in scores.items()}
    assert score["f1"] > score["baseline_f1"] + 10 and score["exact_match"] > score["baseline_exact_match"] + 10, score
