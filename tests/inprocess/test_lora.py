"""LoRA through the whole worker loop in this process (local_mode.py): a run's checkpoints hold the adapters alone and
a run resumed from one trains exactly as the uninterrupted one, for causal_lm under ZeRO-2 and sft (packed
instructions) under ZeRO-3; the export is the merged model (from_pretrained) and the adapter (peft), and the run logs
the trainable share."""

import math
from pathlib import Path

import peft
import pytest
import torch
import transformers
from helpers import save_pretrained_model, tiny_job, write_translation_corpus
from mlflow.tracking import MlflowClient

from orchestrator.config.job import TokenizerConfig
from orchestrator.config.load import validate
from orchestrator.data.tokenizers import train_tokenizer
from orchestrator.tracking.model import hf_directory
from orchestrator.train.checkpoint import TAG
from orchestrator.train.engine import ADAPTER_DIR

from .local_mode import prepared_in_memory, train_in_process

STEPS = 8
GPT2 = {"n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 64}


@pytest.fixture(scope="module")
def start(corpus, tmp_path_factory) -> Path:
    tokenizer = train_tokenizer(TokenizerConfig(vocab_size=512), corpus.read_text().splitlines()[:200])
    return save_pretrained_model(tmp_path_factory.mktemp("start") / "gpt2", "gpt2", tokenizer, **GPT2)


# task -> (ZeRO stage, its data settings)
RUNS = {"causal_lm": (2, {}), "sft": (3, {"text_field": "en", "target_field": "fr", "packing": True})}
EVAL_BATCHES = {"sft": 1}  # sft evaluates by generating responses: slow, and nothing here reads them


def lora_job(start: Path, corpus: Path, tracking_uri: str, task: str):
    zero_stage, data = RUNS[task]
    job = tiny_job(
        corpus,
        task=task,
        data=data,
        train={"max_steps": STEPS, "eval_every": STEPS, "eval_batches": EVAL_BATCHES.get(task), "log_every": 1, "optimizer": {"name": "adamw", "lr": 1e-2}},
        scaling={"num_workers": 1},
        deepspeed={"zero_stage": zero_stage},
        checkpoint={"every_steps": STEPS // 2},
        tracking={"uri": tracking_uri, "experiment": "lora"},
    )
    job["model"], job["data"]["tokenizer"] = {"pretrained": str(start), "lora": {"r": 4, "alpha": 8}}, {}
    return validate(job)


@pytest.mark.parametrize("task", RUNS)
def test_lora_trains_resumes_exactly_and_exports_merged_and_adapter(task, start, local_ray, corpus, tracking_uri, tmp_path):
    job = lora_job(start, write_translation_corpus(tmp_path) if task == "sft" else corpus, tracking_uri, task)
    data = prepared_in_memory(job, tmp_path / "data")
    whole = train_in_process(job, data, tmp_path, f"lora-{task}")
    losses = whole.history(tracking_uri, "train/loss")
    assert all(math.isfinite(loss) for loss in losses.values()) and losses[STEPS] < losses[1], losses

    checkpoint = whole.checkpoint_at(STEPS // 2)
    (states,) = (checkpoint / TAG).glob("*model_states.pt")
    saved = torch.load(states, weights_only=False)["module"]
    # The adapters, not the frozen model; DeepSpeed drops frozen weights by name, so GPT-2's tied head (the embedding
    # under its second name) stays.
    assert {name for name in saved if ".lora_" not in name} == {"base_model.model.lm_head.weight"}, saved.keys()
    resumed = train_in_process(job, data, tmp_path, f"lora-{task}-resumed", initial_checkpoint=checkpoint)
    assert resumed.history(tracking_uri, "train/loss") == {step: loss for step, loss in losses.items() if step > STEPS // 2}

    share = whole.history(tracking_uri, "model/trainable_share")
    assert 0 < list(share.values())[0] < 0.1, share
    exported = hf_directory(Path(MlflowClient(tracking_uri).download_artifacts(whole.run_id, "model", str(tmp_path / "export"))))
    merged = transformers.AutoModelForCausalLM.from_pretrained(exported).eval()
    base = transformers.AutoModelForCausalLM.from_pretrained(start)
    adapted = peft.PeftModel.from_pretrained(base, exported / ADAPTER_DIR).eval()
    inputs = torch.tensor([[5, 17, 42, 8, 99]])
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=inputs).logits, adapted(input_ids=inputs).logits)
        assert not torch.allclose(merged(input_ids=inputs).logits, base(input_ids=inputs).logits)  # it learned something
