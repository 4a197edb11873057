"""Fine-tuning a local model of an architecture no family presets (Qwen2, Mistral, Phi-3), through the whole worker
loop in this process (local_mode.py), under ZeRO-0, 2 and 3: its loss falls, and the export is the same architecture, loading in transformers."""

import math
from pathlib import Path

import pytest
import transformers
from helpers import OTHER_ARCHITECTURES, save_pretrained_model, tiny_job
from mlflow.tracking import MlflowClient

from orchestrator.config.job import TokenizerConfig
from orchestrator.config.load import validate
from orchestrator.data.tokenizers import train_tokenizer
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
