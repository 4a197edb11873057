"""Batch inference: the predictor of each task on a tiny random model, finding the model, one end-to-end run on Ray."""

import json

import mlflow
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import transformers
import yaml
from helpers import OBJECTS, SUBJECTS, VERBS, run_cli, tiny_job

from orchestrator.config.errors import UserError
from orchestrator.config.job import TokenizerConfig
from orchestrator.data.encode import DEFAULT_CHAT_TEMPLATE
from orchestrator.data.tokenizers import train_tokenizer
from orchestrator.inference.batch import METRIC_INPUTS, evaluate, predict, resolve_model
from orchestrator.inference.predictor import CAUSAL_NEW_TOKENS, MODEL_CARD, PREDICTION_COLUMNS, Predictor
from orchestrator.models.build import label_keys, special_tokens
from orchestrator.models.tasks import TASKS
from orchestrator.tracking.model import input_columns, register, save_model

TEXTS = [f"{s} {v} {o}." for s in SUBJECTS for v in VERBS for o in OBJECTS][:40]
LABELS = ["neg", "pos"]
SEQ_LEN = 16


def tiny_bert() -> transformers.BertConfig:
    return transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)


def tiny_gpt2() -> transformers.GPT2Config:
    return transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, n_positions=40)


DIMS = {
    "sequence_classification": tiny_bert,
    "question_answering": tiny_bert,
    "seq2seq": lambda: transformers.T5Config(d_model=32, d_kv=16, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2),
    "causal_lm": tiny_gpt2,
    "sft": tiny_gpt2,
}


def test_every_task_predicts_and_is_evaluated_like_training():
    assert PREDICTION_COLUMNS.keys() == METRIC_INPUTS.keys() == TASKS.keys()


def export_tiny_model(directory, task: str):
    """What train/export.py writes: a random-init model, its tokenizer and the model card."""
    tokenizer = train_tokenizer(TokenizerConfig(train="bpe", vocab_size=300), TEXTS)
    config = DIMS[task]()
    ids = special_tokens(tokenizer) | (label_keys(LABELS) if task == "sequence_classification" else {})
    config.update({"vocab_size": len(tokenizer), **ids})
    transformers.set_seed(0)  # the same weights on every run
    getattr(transformers, TASKS[task].auto_class).from_config(config).save_pretrained(directory)
    if task == "sft":
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE  # training's, which the worker's tokenizer is given to export
    tokenizer.save_pretrained(directory)
    card = {
        "task": task,
        "seq_len": SEQ_LEN,
        "text_field": "text",
        "label_field": "category" if task == "sequence_classification" else None,
        "target_field": "summary" if task in ("seq2seq", "sft") else None,
        "question_field": "question" if task == "question_answering" else None,
        "answer_field": "subject" if task == "question_answering" else None,
        "answer_start_field": None,
    }
    (directory / MODEL_CARD).write_text(json.dumps(card))
    return directory


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return {task: export_tiny_model(tmp_path_factory.mktemp(task), task) for task in TASKS}


def batch_of(n: int) -> dict:
    texts = np.array(TEXTS[: n - 1] + [""], dtype=object)  # an empty text too
    return {
        "text": texts,
        "source": np.array([f"f.jsonl:{i}" for i in range(1, n + 1)], dtype=object),
        "label": np.array([LABELS[i % 2] for i in range(n)], dtype=object),
        "target": np.array([text.upper() for text in texts], dtype=object),
        "question": np.array([f"who {text.split(' ', 2)[-1]}" for text in texts], dtype=object),
        "answer": np.array([" ".join(text.split(" ")[:2]) for text in texts], dtype=object),
    }


def test_classification_predicts_known_labels_with_probabilities(models):
    out = Predictor(str(models["sequence_classification"]))(batch_of(5))
    assert set(out) == {"source", "text", "predicted", "score"}
    assert set(out["predicted"]) <= set(LABELS) and len(out["predicted"]) == 5
    assert np.all((out["score"] >= 0.5) & (out["score"] <= 1))  # the top of two probabilities

    scored = Predictor(str(models["sequence_classification"]), evaluate=True)(batch_of(5))
    assert set(scored) == {"predicted", "score", "label", "loss"}
    assert scored["label"].tolist() == [0, 1, 0, 1, 0]
    assert scored["loss"].shape == (5,) and np.all(np.isfinite(scored["loss"])) and np.all(scored["loss"] > 0)


def test_seq2seq_generates_text_and_scores_references(models):
    assert set(Predictor(str(models["seq2seq"]))(batch_of(4))) == {"source", "text", "generated"}
    out = Predictor(str(models["seq2seq"]), evaluate=True)(batch_of(4))
    assert set(out) == {"generated", "reference", "loss"}
    assert len(out["generated"]) == 4 and all(isinstance(text, str) for text in out["generated"])
    assert out["reference"].tolist() == [str(t) for t in batch_of(4)["target"]]
    assert out["loss"].shape == (4,) and np.all(np.isfinite(out["loss"]))


def test_question_answering_points_at_a_span_of_each_context(models):
    batch = batch_of(4)
    out = Predictor(str(models["question_answering"]))(batch)
    assert set(out) == {"source", "text", "answer", "score"}
    assert all(answer in text for answer, text in zip(out["answer"], batch["text"]))  # a span of the context, as written
    assert np.all((out["score"] >= 0) & (out["score"] <= 1)) and out["answer"][-1] == "" and out["score"][-1] == 0  # empty text

    scored = Predictor(str(models["question_answering"]), evaluate=True)(batch)
    assert set(scored) == {"answer", "score", "reference", "baseline", "loss"}
    assert scored["reference"].tolist() == batch["answer"].tolist() and scored["baseline"][0] == batch["text"][0]  # one sentence
    assert np.all(np.isfinite(scored["loss"][:3]) & (scored["loss"][:3] > 0)) and np.isnan(scored["loss"][3])  # no context: no span


def test_causal_lm_continues_texts_and_scores_them(models):
    predictor = Predictor(str(models["causal_lm"]))
    out = predictor(batch_of(3))
    assert set(out) == {"source", "text", "generated"} and len(out["generated"]) == 3
    assert all(len(predictor.tokenizer(text)["input_ids"]) <= CAUSAL_NEW_TOKENS for text in out["generated"])
    # Left padding: a text continues the same alone as in a batch with longer ones.
    alone = predictor({key: column[:1] for key, column in batch_of(3).items()})
    assert alone["generated"][0] == out["generated"][0]

    scored = Predictor(str(models["causal_lm"]), evaluate=True)(batch_of(3))
    assert set(scored) == {"loss"} and np.all(np.isfinite(scored["loss"]))
    assert np.all(np.abs(scored["loss"] - np.log(predictor.model.config.vocab_size)) < 2)  # near-uniform: untrained


def test_sft_answers_prompts_rendered_as_in_training_and_scores_the_references(models):
    predictor = Predictor(str(models["sft"]))
    out = predictor(batch_of(3))
    assert set(out) == {"source", "text", "generated"} and len(out["generated"]) == 3
    # the prompt rendered as training rendered it: text, newline; left padding leaves a prompt's answer unchanged
    prompt = predictor.tokenizer(f"{TEXTS[0]}\n", add_special_tokens=False, return_tensors="pt")["input_ids"]
    alone = predictor.model.generate(prompt, attention_mask=prompt.new_ones(prompt.shape), max_new_tokens=SEQ_LEN - prompt.shape[1], do_sample=False)
    assert out["generated"][0] == predictor.tokenizer.decode(alone[0, prompt.shape[1] :], skip_special_tokens=True)

    scored = Predictor(str(models["sft"]), evaluate=True)(batch_of(3))
    assert set(scored) == {"generated", "reference", "loss"} and scored["reference"].tolist() == [str(t) for t in batch_of(3)["target"]]
    assert np.all(np.abs(scored["loss"] - np.log(predictor.model.config.vocab_size)) < 2)  # near-uniform: untrained


def log_model(client: mlflow.MlflowClient, experiment_id: str, hf_dir, task: str, run_name: str, registered_model: str) -> str:
    """What train/export.py does with a finished run's model: an MLflow model, logged and registered."""
    run_id = client.create_run(experiment_id, tags={"orchestrator.run_name": run_name}).info.run_id
    save_model(str(hf_dir), str(hf_dir.parent / f"{run_name}-mlflow"), task, TEXTS[:2])
    client.log_artifacts(run_id, str(hf_dir.parent / f"{run_name}-mlflow"), "model")
    register(client, run_id, registered_model)
    client.set_terminated(run_id, "FINISHED")
    return run_id


@pytest.fixture
def registry(tmp_path, mlflow_uri):
    client = mlflow.MlflowClient(mlflow_uri)
    return mlflow_uri, client, client.create_experiment("inference", artifact_location=str(tmp_path / "artifacts"))


@pytest.mark.parametrize("task", list(TASKS))
def test_the_registered_model_loads_with_pyfunc_and_predicts_as_predict_does(models, registry, task, monkeypatch):
    uri, client, experiment_id = registry
    log_model(client, experiment_id, models[task], task, task, "tiny")
    version = client.get_model_version("tiny", "1")
    assert version.run_id and version.status == "READY"

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    loaded = mlflow.pyfunc.load_model("models:/tiny/1")
    assert loaded.metadata.get_input_schema().input_names() == list(input_columns(task))
    rows = pd.DataFrame({column: values[:4] for column, values in batch_of(4).items() if column in input_columns(task)})
    predicted = loaded.predict(rows)
    expected = pd.DataFrame(Predictor(str(models[task])).columns(rows["text"].tolist(), rows))
    pd.testing.assert_frame_equal(predicted, expected)
    assert loaded.metadata.get_output_schema().input_names() == list(expected.columns)


def test_resolve_model_finds_local_mlflow_and_job_models(models, registry, tmp_path, corpus):
    local = models["causal_lm"]
    assert resolve_model(str(local), None) == local

    uri, client, experiment_id = registry
    run_id = log_model(client, experiment_id, local, "causal_lm", "tiny", "tiny-model")
    for spec in (f"runs:/{run_id}/model", "models:/tiny-model/1"):
        assert json.loads((resolve_model(spec, uri) / MODEL_CARD).read_text())["task"] == "causal_lm"

    job = tiny_job(corpus, tracking={"uri": uri, "experiment": "inference", "run_name": "tiny"})
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(job))
    assert (resolve_model(str(job_file), None) / MODEL_CARD).is_file()

    job_file.write_text(yaml.safe_dump(job | {"tracking": job["tracking"] | {"run_name": "other"}}))
    with pytest.raises(UserError, match="no finished run with a model"):
        resolve_model(str(job_file), None)


def test_export_copies_a_models_directory_for_another_jobs_pretrained(models, tmp_path):
    exported = tmp_path / "exported"
    assert run_cli("export", str(models["causal_lm"]), str(exported)).code == 0
    assert isinstance(transformers.AutoModelForCausalLM.from_pretrained(exported), transformers.GPT2LMHeadModel)
    assert (exported / MODEL_CARD).is_file() and (exported / "tokenizer.json").is_file()
    again = run_cli("export", str(models["causal_lm"]), str(exported))
    assert again.code == 2 and f"DIR: {exported} exists and is not an empty directory" in again.stderr


def test_resolve_model_rejects_anything_else(tmp_path):
    with pytest.raises(UserError, match="is not a model directory, an MLflow URI"):
        resolve_model(str(tmp_path / "nowhere"), None)
    with pytest.raises(UserError, match="holds no model exported by orchestrator"):
        resolve_model(str(tmp_path), None)  # a directory without a model card


def test_predict_and_evaluate_on_ray(models, tmp_path, local_ray, capsys):
    inputs = tmp_path / "rows.jsonl"
    lines = [json.dumps({"text": text, "category": LABELS[i % 2]}) for i, text in enumerate(TEXTS[:20])]
    inputs.write_text("\n".join(lines + ['{"text": broken', json.dumps({"text": "x", "category": "maybe"})]) + "\n")
    model = models["sequence_classification"]

    figures = predict(model, [str(inputs)], tmp_path / "out", batch_size=8)
    written = pq.read_table(tmp_path / "out")
    assert written.num_rows == figures["rows"] == 21  # all but the malformed line
    assert set(written.column_names) == {"source", "text", "predicted", "score"}
    assert sorted(int(source.rsplit(":", 1)[1]) for source in written["source"].to_pylist()) == [*range(1, 21), 22]
    assert "skipped 1 unreadable rows" in capsys.readouterr().out

    metrics = evaluate(model, [str(inputs)], batch_size=8)
    assert set(metrics) == set(TASKS["sequence_classification"].reported_metrics) - {"train/loss"}
    assert 0 <= metrics["eval/accuracy"] <= 1 and metrics["eval/majority_accuracy"] == 0.5
    assert "skipped 1 rows with a label the model does not know" in capsys.readouterr().out


def test_evaluate_scores_question_answering_against_the_answers_as_written(models, tmp_path, local_ray):
    batch = batch_of(9)
    inputs = tmp_path / "questions.jsonl"
    rows = zip(batch["text"][:8], batch["question"], batch["answer"])
    inputs.write_text("".join(json.dumps({"text": text, "question": question, "subject": answer}) + "\n" for text, question, answer in rows))
    metrics = evaluate(models["question_answering"], [str(inputs)], batch_size=4)
    assert set(metrics) == set(TASKS["question_answering"].reported_metrics) - {"train/loss"}
    # the baseline answers with the whole one-sentence context: every answer's words are in it
    assert metrics["eval/baseline_exact_match"] == 0 and 0 < metrics["eval/baseline_f1"] < 100
    assert 0 <= metrics["eval/f1"] <= 100 and np.isfinite(metrics["eval/loss"])
