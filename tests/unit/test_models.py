"""Model building: random-init presets and local pretrained models, with the job's dropout."""

import torch
import transformers

from orchestrator.config.job import ModelConfig
from orchestrator.models.build import build_model

TINY = {"layers": 1, "hidden": 32, "heads": 2, "ffn": 64, "max_positions": 32}


def test_pretrained_model_loads_its_weights_with_the_jobs_dropout(tmp_path):
    saved = build_model(ModelConfig(dims=TINY), "causal_lm", vocab_size=100, eos_token_id=0, seed=1)
    saved.save_pretrained(tmp_path)

    loaded = build_model(ModelConfig(pretrained=str(tmp_path), dropout=0.25), "causal_lm", 100, 0, seed=2)
    assert isinstance(loaded, transformers.GPT2LMHeadModel)
    assert (loaded.config.attn_pdrop, loaded.config.resid_pdrop, loaded.config.embd_pdrop) == (0.25, 0.25, 0.25)
    for (name, mine), theirs in zip(loaded.state_dict().items(), saved.state_dict().values()):
        assert torch.equal(mine, theirs), name

    untouched = build_model(ModelConfig(pretrained=str(tmp_path)), "causal_lm", 100, 0, seed=2)
    assert untouched.config.attn_pdrop == saved.config.attn_pdrop
