"""Low-rank adapters (peft's LoRA) on the model a job builds, and the merged weights its export writes.

peft is imported here only, on the workers: a job without model.lora never loads it."""

import peft
import torch
from peft.tuners.lora import LoraLayer

from orchestrator.config.job import LoraConfig

# transformers auto class of the task -> peft's task type (what peft trains in full beside the adapters: the new
# classifier or span head of SEQ_CLS and QUESTION_ANS)
PEFT_TASK_TYPES = {
    "AutoModelForCausalLM": peft.TaskType.CAUSAL_LM,
    "AutoModelForSequenceClassification": peft.TaskType.SEQ_CLS,
    "AutoModelForSeq2SeqLM": peft.TaskType.SEQ_2_SEQ_LM,
    "AutoModelForQuestionAnswering": peft.TaskType.QUESTION_ANS,
}
ADAPTER = "default"  # peft's name of the one adapter
PEFT_PREFIX = "base_model.model."  # what a PeftModel's state dict puts before the base model's names


def with_lora(model: torch.nn.Module, lora: LoraConfig, auto_class: str) -> peft.PeftModel:
    """The model with adapters on its target modules; every other weight frozen."""
    config = peft.LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type=PEFT_TASK_TYPES[auto_class],
    )
    return peft.get_peft_model(model, config)


def merged_state_dict(model: peft.PeftModel, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The base model's weights by its own names, each adapted one with its update scaling · B·A added (peft's merge,
    done on a gathered state dict of the PeftModel: under ZeRO-3 the model itself holds only shards), and the head peft
    trained whole (modules_to_save) in place of the original."""
    adapted = {name.removeprefix(PEFT_PREFIX): module for name, module in model.named_modules() if isinstance(module, LoraLayer)}
    merged = {}
    for key, tensor in state.items():
        name = key.removeprefix(PEFT_PREFIX)
        if ".lora_" in name or ".original_module." in name:
            continue
        name = name.replace(f".modules_to_save.{ADAPTER}.", ".")
        module, _, parameter = name.partition(".base_layer.")
        if parameter:
            name = f"{module}.{parameter}"
            if parameter == "weight":
                tensor = tensor + update(adapted[module], state, PEFT_PREFIX + module).to(tensor.dtype)
        merged[name] = tensor
    return merged


def update(layer: LoraLayer, state: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    """What a linear layer's adapter adds to its weight (peft's lora.Linear.get_delta_weight, from state tensors);
    GPT-2's Conv1D stores its weight transposed (fan_in_fan_out)."""
    down, up = state[f"{prefix}.lora_A.{ADAPTER}.weight"].float(), state[f"{prefix}.lora_B.{ADAPTER}.weight"].float()
    delta = (up @ down) * layer.scaling[ADAPTER]
    return delta.T if layer.fan_in_fan_out else delta
