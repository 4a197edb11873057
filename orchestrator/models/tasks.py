"""Tasks: what a batch feeds the model and what an evaluation reports. The job's `task:` picks one."""

import math
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Task:
    auto_class: str  # transformers auto class that builds the model
    model_inputs: Callable[[object], dict]  # a batch of token ids -> keyword arguments of the model
    eval_metrics: Callable[[float], dict[str, float]]  # mean validation loss -> named metrics
    reported_metrics: tuple[str, ...]  # what a training run reports to Ray (and so what a sweep can optimise)


def _causal_lm_inputs(input_ids) -> dict:
    # Hugging Face shifts the labels inside the model, so labels are the inputs themselves.
    return {"input_ids": input_ids, "labels": input_ids}


def _causal_lm_metrics(mean_loss: float) -> dict[str, float]:
    return {"eval/loss": mean_loss, "eval/perplexity": math.exp(min(mean_loss, 50.0))}


TASKS: dict[str, Task] = {
    "causal_lm": Task(
        "AutoModelForCausalLM", _causal_lm_inputs, _causal_lm_metrics, ("train/loss", "eval/loss", "eval/perplexity")
    ),
}
