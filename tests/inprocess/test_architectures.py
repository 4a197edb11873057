"""Fine-tuning a local model of an architecture no family presets (Qwen2, Mistral, Phi-3), through the whole worker
loop in this process (local_mode.py), under ZeRO-0, 2 and 3: its loss falls, and the export is the same architecture, loading in transformers.
A question answerer of one token type (RoBERTa) trains, evaluates and predicts without BERT's two."""

import json
import math
from pathlib import Path

import pytest
import transformers
from helpers import OTHER_ARCHITECTURES, save_pretrained_model, tiny_job, write_question_corpus
from mlflow.tracking import MlflowClient

from orchestrator.config.job import TokenizerConfig
from orchestrator.config.load import validate
from orchestrator.data.tokenizers import train_tokenizer
from orchestrator.inference.predictor import Predictor
from orchestrator.tracking.model import hf_directory

from .local_mode import prepared_in_memory, train_in_process

STEPS = 8
ZERO_STAGES = dict(zip(OTHER_ARCHITECTURES, (3, 2, 0)))  # each architecture under another stage: ZeRO-3 builds it in shards


@pytest.mark.parametrize("model_type", OTHER_ARCHITECTURES)
def test_a_local_model_of_any_architecture_fine_tunes_and_exports_as_itself(model_type, local_ray, corpus, tracking_uri, tmp_path):
    texts = corpus.read_text().splitlines()[:200]
    start = save_pretrained_model(tmp_path / "start", model_type, train_tokenizer(TokenizerConfig(vocab_size=512), texts))
    job = tiny_job(
        corpus,
        train={"max_steps": STEPS, "eval_every": STEPS, "log_every": 2, "optimizer": {"name": "adamw", "lr": 3e-3}},
        scaling={"num_workers": 1},
        deepspeed={"zero_stage": ZERO_STAGES[model_type]},
        checkpoint={"every_steps": STEPS},
        tracking={"uri": tracking_uri, "experiment": "architectures"},
    )
    job["model"], job["data"]["tokenizer"] = {"pretrained": str(start)}, {}  # the model's own tokenizer
    job = validate(job)
    run = train_in_process(job, prepared_in_memory(job, tmp_path / "data"), tmp_path, model_type)

    losses = run.history(tracking_uri, "train/loss")
    assert all(math.isfinite(loss) for loss in losses.values()) and losses[STEPS] < losses[min(losses)], losses
    exported = hf_directory(Path(MlflowClient(tracking_uri).download_artifacts(run.run_id, "model", str(tmp_path / "export"))))
    model = transformers.AutoModelForCausalLM.from_pretrained(exported)
    assert model.config.model_type == model_type and model.num_parameters() == transformers.AutoModelForCausalLM.from_pretrained(start).num_parameters()


def roberta_template(tokenizer):
    """RoBERTa's pair template, `<s> question </s></s> context </s>`: it gives every token type 0."""
    from tokenizers import processors

    end = (tokenizer.eos_token, tokenizer.eos_token_id)
    tokenizer.backend_tokenizer.post_processor = processors.RobertaProcessing(end, end)
    return tokenizer


# RoBERTa has a question-answering class and one token type (as its checkpoints set it), where BERT has two. With its
# own pair template, every token is of type 0; with a template-less tokenizer, the context's tokens are of type 1.
ANSWERERS = {"roberta": roberta_template, "roberta-without-a-template": lambda tokenizer: tokenizer}


@pytest.mark.parametrize("tokenizer", ANSWERERS)
def test_a_question_answering_model_of_one_token_type_trains_and_finds_the_context(tokenizer, local_ray, tracking_uri, tmp_path):
    corpus = write_question_corpus(tmp_path / "data")
    texts = [json.loads(line)["context"] for line in corpus.read_text().splitlines()]
    template = ANSWERERS[tokenizer](train_tokenizer(TokenizerConfig(vocab_size=512), texts))
    start = save_pretrained_model(tmp_path / "start", "roberta", template, "AutoModelForQuestionAnswering", type_vocab_size=1)
    job = tiny_job(
        corpus,
        task="question_answering",
        data={"text_field": "context", "question_field": "question", "answer_field": "answer", "seq_len": 48, "val_fraction": 0.1},
        train={"max_steps": STEPS, "eval_every": STEPS, "micro_batch_size": 8, "optimizer": {"name": "adamw", "lr": 1e-3}},
        scaling={"num_workers": 1},
        checkpoint={"every_steps": STEPS},
        tracking={"uri": tracking_uri, "experiment": "answerers"},
    )
    job["model"], job["data"]["tokenizer"] = {"pretrained": str(start)}, {}
    job = validate(job)
    run = train_in_process(job, prepared_in_memory(job, tmp_path / "data"), tmp_path, tokenizer)

    losses = run.history(tracking_uri, "train/loss")
    assert all(math.isfinite(loss) for loss in losses.values()) and losses[STEPS] < losses[min(losses)], losses
    # the baseline answers with the context's sentence nearest the question: a context found (F1 0 otherwise)
    assert run.history(tracking_uri, "eval/baseline_f1")[STEPS] > 10
    exported = hf_directory(Path(MlflowClient(tracking_uri).download_artifacts(run.run_id, "model", str(tmp_path / "export"))))
    assert transformers.AutoModelForQuestionAnswering.from_pretrained(exported).config.model_type == "roberta"
    record = json.loads(corpus.read_text().splitlines()[0])
    (answer,) = Predictor(str(exported)).columns([record["context"]], {"question": [record["question"]]})["answer"]
    assert answer in record["context"]
