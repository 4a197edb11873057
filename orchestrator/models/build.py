"""Builds the Hugging Face model a job describes: random-init from a family preset, or a local pretrained one."""

import torch
import transformers

from orchestrator.config.job import ModelConfig
from orchestrator.config.paths import expand_path
from orchestrator.models.families import FAMILIES
from orchestrator.models.tasks import TASKS

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def special_tokens(tokenizer) -> dict[str, int]:
    """The trained tokenizer's ids, which a random-init config must use (the family defaults belong to other vocabularies).
    Encoder-decoders start decoding from the padding token, as T5 does."""
    ids = {"bos_token_id": tokenizer.eos_token_id, "eos_token_id": tokenizer.eos_token_id}
    if tokenizer.pad_token_id is not None:
        ids |= {"pad_token_id": tokenizer.pad_token_id, "decoder_start_token_id": tokenizer.pad_token_id}
    return ids


def label_keys(label_names: list[str]) -> dict:
    if not label_names:
        return {}
    return {
        "num_labels": len(label_names),
        "id2label": dict(enumerate(label_names)),
        "label2id": {name: i for i, name in enumerate(label_names)},
    }


def hf_config(model: ModelConfig, tokenizer, label_names: list[str]) -> transformers.PretrainedConfig:
    family = FAMILIES[model.family]
    keys = family.config_keys(model.dims_resolved())
    if model.dropout is not None:
        keys.update(dict.fromkeys(family.dropout_keys, model.dropout))
    config_class = getattr(transformers, family.config_class)
    return config_class(vocab_size=len(tokenizer), **special_tokens(tokenizer), **label_keys(label_names), **keys)


def set_dropout(config: transformers.PretrainedConfig, probability: float) -> None:
    """Every dropout probability of a config, whatever the architecture calls it (attn_pdrop, hidden_dropout_prob,
    attention_dropout, dropout_rate...)."""
    for key, value in config.to_dict().items():
        if isinstance(value, float) and ("dropout" in key or key.endswith("pdrop")):
            setattr(config, key, probability)


def build_model(model: ModelConfig, task: str, tokenizer, label_names: list[str], seed: int, activation_checkpointing: bool = False) -> torch.nn.Module:
    """Every rank calls this with the same seed, so random initialisation (a new classifier head, the adapters) is
    identical across ranks."""
    built = instantiate(model, task, tokenizer, label_names, seed)
    if activation_checkpointing:
        checkpoint_activations(built)
    if model.lora:
        from orchestrator.models.lora import with_lora  # peft: only for the jobs that use it

        built = with_lora(built, model.lora, TASKS[task].auto_class)
    return built


def instantiate(model: ModelConfig, task: str, tokenizer, label_names: list[str], seed: int) -> torch.nn.Module:
    auto_class = getattr(transformers, TASKS[task].auto_class)
    torch.manual_seed(seed)
    if model.pretrained:
        config = transformers.AutoConfig.from_pretrained(expand_path(model.pretrained), **label_keys(label_names))
        if model.dropout is not None:
            set_dropout(config, model.dropout)
        return auto_class.from_pretrained(expand_path(model.pretrained), config=config, dtype=torch.float32)
    return auto_class.from_config(hf_config(model, tokenizer, label_names))


def checkpoint_activations(model: torch.nn.Module) -> None:
    """Each transformer layer keeps only its input for the backward pass and runs again in it (torch's non-reentrant
    checkpoint: the one that works under ZeRO-3's parameter hooks). The layers do it themselves, so a pipeline stage
    calling them one by one checkpoints too."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(kwargs)
    else:  # its name before transformers 5
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
