"""The example jobs of the classification and translation tasks, submitted through `ray job submit` as users do,
shortened with --set. Each must learn: the classifier beats the majority-class baseline, and the translator's BLEU
beats the untrained model's. Their MLflow runs hold the data report and the task's metrics and plots.
(Causal LM: test_training.py checks that perplexity falls.)"""

import pytest
from helpers import REPO, mlflow_run_id, submit, write_translation_corpus
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.integration

DATA_REPORT = {"data/stages.json", "data/report.json", "data/summary.txt", "data/token_lengths.png", "data/quarantine.jsonl"}


@pytest.fixture(scope="module")
def client(mlflow_server) -> MlflowClient:
    return MlflowClient(mlflow_server)


def artifacts(client: MlflowClient, run_id: str, path: str = "") -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def by_step(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    return dict(sorted((m.step, m.value) for m in client.get_metric_history(run_id, key)))


def last(client: MlflowClient, run_id: str, key: str) -> tuple[int, float]:
    return max(by_step(client, run_id, key).items())


def common_overrides(tmp_path, name: str) -> list[str]:
    return [
        "--set",
        f"checkpoint.dir={tmp_path / 'runs'}",
        "--set",
        f"data.cache_dir={tmp_path / 'cache'}",
        "--set",
        f"tracking.run_name={name}",
    ]


def test_classification_fine_tunes_minilm_beyond_the_majority_baseline(cluster, client, tmp_path):
    overrides = ["--set", "train.epochs=null", "--set", "train.max_steps=40", "--set", "train.eval_every=20"]
    overrides += ["--set", "data.augment.copies=0", "--set", "checkpoint.every_steps=20"]
    output = submit(cluster, "train", str(REPO / "jobs/fortunes-classify.yaml"), *overrides, *common_overrides(tmp_path, "classify"))
    assert "(cache: miss)" in output
    run_id = mlflow_run_id(output)

    step, accuracy = last(client, run_id, "eval/accuracy")
    _, majority = last(client, run_id, "eval/majority_accuracy")
    assert step == 40 and accuracy > majority + 0.1, (accuracy, majority)
    for key in ("eval/precision", "eval/recall", "eval/f1", "data/rows_read", "data/rows_quarantined", "data/tokens"):
        assert client.get_metric_history(run_id, key), key
    found = artifacts(client, run_id)
    assert DATA_REPORT | {"plots/confusion_matrix.png", "plots/confusion_matrix.csv", "model/MLmodel", "model/artifacts/hf/orchestrator.json"} <= found
    matrix = client.download_artifacts(run_id, "plots/confusion_matrix.csv", str(tmp_path))
    assert open(matrix).readline().strip().split(",")[1:] == ["computers", "definitions", "love", "politics", "science", "sports"]


def test_translation_bleu_beats_the_untrained_model(cluster, client, tmp_path):
    corpus = write_translation_corpus(tmp_path / "data")
    overrides = ["--set", f"data.paths=[{corpus}]", "--set", "data.tokenizer.vocab_size=300", "--set", "data.val_fraction=0.1"]
    overrides += ["--set", "train.max_steps=300", "--set", "train.eval_every=150", "--set", "checkpoint.every_steps=150"]
    output = submit(cluster, "train", str(REPO / "jobs/translate-eng-fra.yaml"), *overrides, *common_overrides(tmp_path, "translate"))
    run_id = mlflow_run_id(output)

    bleu = by_step(client, run_id, "eval/bleu")
    assert sorted(bleu) == [0, 150, 300]
    assert bleu[300] > bleu[0] + 20, bleu
    for key in ("eval/chrf", "eval/rougeL"):
        scores = by_step(client, run_id, key)
        assert scores[300] > scores[0], (key, scores)
    found = artifacts(client, run_id)
    assert DATA_REPORT | {"eval/generated.tsv", "plots/training_curves.png", "model/MLmodel", "model/artifacts/hf/orchestrator.json"} <= found
