"""Builds the Hugging Face model a job describes: random-init from a family preset, or a local pretrained one."""

import torch
import transformers

from orchestrator.config.job import ModelConfig
from orchestrator.config.load import expand_path
from orchestrator.models.families import FAMILIES
from orchestrator.models.tasks import TASKS

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def hf_config(model: ModelConfig, vocab_size: int, eos_token_id: int) -> transformers.PretrainedConfig:
    family = FAMILIES[model.family]
    keys = {family.dim_keys[name]: value for name, value in model.dims_resolved().items()}
    if model.dropout is not None:
        keys.update(dict.fromkeys(family.dropout_keys, model.dropout))
    config_class = getattr(transformers, family.config_class)
    return config_class(vocab_size=vocab_size, bos_token_id=eos_token_id, eos_token_id=eos_token_id, **family.fixed, **keys)


def build_model(model: ModelConfig, task: str, vocab_size: int, eos_token_id: int, seed: int) -> torch.nn.Module:
    """Every rank calls this with the same seed, so random initialisation is identical across ranks."""
    auto_class = getattr(transformers, TASKS[task].auto_class)
    torch.manual_seed(seed)
    if model.pretrained:
        return auto_class.from_pretrained(expand_path(model.pretrained), dtype=torch.float32)
    return auto_class.from_config(hf_config(model, vocab_size, eos_token_id))
