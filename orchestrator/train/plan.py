"""Memory per worker before anything runs (`orchestrator plan`): model states for each ZeRO stage and offload choice,
as the ZeRO paper counts them and as DeepSpeed's own estimators do, plus activations, against what a worker has.

Nothing here imports torch, transformers or DeepSpeed (seconds each): the parameters are counted from the model
config's numbers, module by module (models/inventory.py), and what the libraries compute for the plan is written
out: DeepSpeed's estimators and its balanced pipeline partition, the size of a tokenizer's vocabulary. Tensor and
pipeline parallelism first split the parameters (what the busiest worker holds is counted), then ZeRO shards that
worker's states over the data-parallel replicas.
"""

import itertools
import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

from orchestrator.config.errors import UserError
from orchestrator.config.job import HF_DIM_KEYS, MAX_DIM, JobConfig, ModelConfig, ParallelismConfig
from orchestrator.config.paths import expand_path
from orchestrator.models.families import FAMILIES
from orchestrator.models.inventory import ARCHITECTURES, Inventory, config_problem, lora_parameters, saved_inventory
from orchestrator.models.saved import saved_shapes


def option_name(option: dict) -> str:
    """'ZeRO-3 + offload optimizer and params': a stage and what it offloads, as the job's deepspeed section sets them."""
    offloaded = [part for part in ("optimizer", "params") if option.get(f"offload_{part}")]
    return f"ZeRO-{option['zero_stage']}" + (f" + offload {' and '.join(offloaded)}" if offloaded else "")


# The layouts `plan` compares, in the order it prefers them when several fit (less communication first).
OPTIONS = {
    option_name(option): option
    for option in (
        {"zero_stage": 0},
        {"zero_stage": 1},
        {"zero_stage": 2},
        {"zero_stage": 3},
        {"zero_stage": 2, "offload_optimizer": True},
        {"zero_stage": 3, "offload_optimizer": True, "offload_params": True},
    )
}
# A worker process before its model (Python, torch, Ray, DeepSpeed), measured on CPU: benchmarks/zero_memory.py.
CPU_PROCESS_BYTES = int(0.46 * 2**30)


@dataclass(frozen=True)
class ModelSize:
    parameters: int
    worker_parameters: int  # the most one worker holds once tensor or pipeline parallelism has split the model
    largest_layer: int  # parameters of the largest single module: what ZeRO-3 gathers at once
    layers: int
    hidden: int
    heads: int
    vocab: int
    trainable: int | None = None  # parameters the optimizer updates (LoRA's adapters); None: all of them

    @property
    def worker_trainable(self) -> int:
        return self.worker_parameters if self.trainable is None else self.trainable


def special_token_names(settings: dict) -> set[str]:
    """The tokens a tokenizer_config.json or special_tokens_map.json names: its *_token keys, its extra (formerly
    additional) special tokens and its added_tokens_decoder; each a string or an AddedToken's fields."""
    extra = settings.get("extra_special_tokens") or settings.get("additional_special_tokens") or []
    named = [value for key, value in settings.items() if key.endswith("_token")]
    tokens = [*named, *(extra.values() if isinstance(extra, dict) else extra), *(settings.get("added_tokens_decoder") or {}).values()]
    return {token["content"] if isinstance(token, dict) else token for token in tokens if isinstance(token, (str, dict))}


def tokenizer_size(path: str) -> int:
    """len(load_tokenizer(path)) without transformers (seconds to import, torch with it): the tokens of tokenizer.json,
    added ones included, and the special tokens transformers adds on loading where they are missing (the padding token
    tokenizer.json sets, those a directory's tokenizer_config.json and special_tokens_map.json name)."""
    tokenizer_file = path if os.path.isfile(path) else os.path.join(path, "tokenizer.json")
    if not os.path.isfile(tokenizer_file):  # a slow tokenizer's files (vocab.txt, a SentencePiece model): only transformers converts them
        from orchestrator.data.tokenizers import load_tokenizer

        return len(load_tokenizer(path))
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(tokenizer_file)
    settings = {"pad_token": tokenizer.padding["pad_token"]} if tokenizer.padding else {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if os.path.isfile(settings_file := os.path.join(path, name)):
            with open(settings_file) as file:
                settings |= json.load(file)
    vocabulary = tokenizer.get_vocab(with_added_tokens=True)
    return len(vocabulary) + len(special_token_names(settings) - vocabulary.keys())


def vocabulary_size(job: JobConfig) -> int:
    """The trained tokenizer's configured size (an upper bound: a small corpus may give fewer), or a local one's."""
    if job.data.tokenizer.path:
        return tokenizer_size(expand_path(job.data.tokenizer.path))
    return job.data.tokenizer.vocab_size


def model_config(job: JobConfig) -> dict:
    """The config keys the job's model is counted from, over its config class's defaults: the pretrained model's
    config.json, which the job's schema does not check (plan checks what it reads), or those a random-init model gets
    (models/build.py hf_config)."""
    family = job.model.family
    labels = {"num_labels": len(job.data.labels or ["0", "1"])}  # a classification head's size hardly matters
    if not job.model.pretrained:
        given = {"vocab_size": vocabulary_size(job), **labels, **FAMILIES[family].config_keys(job.model.dims_resolved())}
        return ARCHITECTURES[family].config(given)
    config = ARCHITECTURES[family].config(job.model.pretrained_config() | labels)
    if problem := config_problem(family, config):
        raise UserError(f"model.pretrained: config.json: {problem}")
    return config


def counted_size(family: str, config: dict, split: ParallelismConfig) -> ModelSize:
    """The size of a model of the family with this config (the keys models/inventory.py reads), split so."""
    model, dim_keys = ARCHITECTURES[family].count(config), FAMILIES[family].dim_keys
    return ModelSize(
        parameters=model.parameters,
        worker_parameters=WORKER_PARAMETERS[split.layout](model, split),
        largest_layer=model.largest_module,
        layers=model.layers,
        hidden=config[dim_keys["hidden"]],
        heads=config[dim_keys["heads"]],
        vocab=config["vocab_size"],
    )


def model_size(job: JobConfig) -> ModelSize:
    if job.model.family in ARCHITECTURES:
        size = counted_size(job.model.family, model_config(job), job.parallelism)
    else:
        size = saved_size(job.model)
    if job.model.lora:
        adapters = lora_parameters(saved_shapes(Path(expand_path(job.model.pretrained))), job.model.lora)
        return replace(size, parameters=size.parameters + adapters, worker_parameters=size.worker_parameters + adapters, trainable=adapters)
    return size


def saved_size(model: ModelConfig) -> ModelSize:
    """A pretrained model of an architecture models/inventory.py does not count (it trains data-parallel only): the
    parameters its safetensors files hold, and the dimensions its activations are estimated from, from config.json."""
    directory = Path(expand_path(model.pretrained))
    dims = {name: model.dim(name) for name in ("layers", "hidden", "heads")} | {"vocab": (model.pretrained_config() or {}).get("vocab_size")}
    for name, value in dims.items():
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_DIM:
            keys = HF_DIM_KEYS.get(name, ("vocab_size",))
            raise UserError(f"model.pretrained: config.json: {' or '.join(keys)}: a whole number from 1 to {MAX_DIM:,} (got {value!r})")
    if not any(directory.glob("*.safetensors")):
        raise UserError(f"model.pretrained: plan counts a {model.family} model from its safetensors files; {model.pretrained} has none")
    counted = saved_inventory(directory, dims["layers"])
    return ModelSize(counted.parameters, counted.parameters, counted.largest_module, dims["layers"], dims["hidden"], dims["heads"], dims["vocab"])


def partition_balanced(weights: list[int], parts: int) -> list[int]:
    """DeepSpeed's partition_balanced (deepspeed/runtime/utils.py), with which PipelineModule cuts its layers by
    parameters, written out: importing DeepSpeed took seconds. The stage bounds, by dynamic programming over (layers,
    stages), that make the heaviest and the lightest stage closest; among equals, the last cut it tries. Fewer layers
    than stages: one a stage (its partition_uniform)."""
    layers = len(weights)
    if layers <= parts:
        return [min(part, layers) for part in range(parts + 1)]
    prefix = [0, *itertools.accumulate(weights)]
    heaviest, lightest, spread = ([[math.inf] * (parts + 1) for _ in range(layers + 1)] for _ in range(3))
    cut = [[0] * (parts + 1) for _ in range(layers + 1)]
    heaviest[0][0] = spread[0][0] = 0
    for end in range(1, layers + 1):
        for stages in range(1, min(end, parts) + 1):
            for start in range(end):
                last = prefix[end] - prefix[start]
                high, low = max(heaviest[start][stages - 1], last), min(lightest[start][stages - 1], last)
                if spread[end][stages] >= high - low:
                    spread[end][stages], heaviest[end][stages], lightest[end][stages], cut[end][stages] = high - low, high, low, start
    bounds = [layers]
    for stages in range(parts, 0, -1):
        bounds.append(cut[bounds[-1]][stages])
    return bounds[::-1]


def heaviest_stage(model: Inventory, split: ParallelismConfig) -> int:
    """The stage DeepSpeed's balanced partition gives the most (the tied embedding counts on the first and the last)."""
    layers = model.pipeline_layers
    bounds = partition_balanced(layers, split.pipeline)
    return max(sum(layers[start:end]) for start, end in zip(bounds, bounds[1:]))


# The most parameters one worker holds, by how the model is split (keys of train.parallel.LAYOUTS). Tensor parallel:
# AutoTP splits every linear layer (the head included) over the T ranks, the embeddings and norms stay whole.
WORKER_PARAMETERS = {
    "data": lambda model, split: model.parameters,
    "tensor": lambda model, split: model.parameters - model.linear + math.ceil(model.linear / split.tensor),
    "pipeline": heaviest_stage,
}


def paper_bytes(stage: int, parameters: int, workers: int, trainable: int | None = None, frozen_bytes: int = 2) -> float:
    """ZeRO paper (Rajbhandari et al. 2020, section 5), mixed-precision Adam: 2 (16-bit weights) + 2 (16-bit
    gradients) + 12 (fp32 weights, momentum, variance) bytes per parameter, each term divided among the workers from
    the stage that partitions it on. Frozen parameters (all but `trainable`: LoRA's base model) hold only their
    weights, `frozen_bytes` each (4 when training in fp32)."""
    trainable = parameters if trainable is None else trainable
    terms = {"weights": 2 * trainable + frozen_bytes * (parameters - trainable), "grads": 2 * trainable, "optimizer": 12 * trainable}
    divided = {0: (), 1: ("optimizer",), 2: ("optimizer", "grads"), 3: ("optimizer", "grads", "weights")}[stage]
    return sum(value / workers if name in divided else value for name, value in terms.items())


# DeepSpeed's estimators (deepspeed/runtime/zero/stage_1_and_2.py estimate_zero2_model_states_mem_needs and
# stage3.py estimate_zero3_model_states_mem_needs, on one node, with ZeRO-3's zero_init): host memory is per node,
# with this margin on it.
HOST_BUFFER_FACTOR = 1.5


def zero2_estimate(parameters: int, devices: int, offload: bool, trainable: int | None = None) -> tuple[int, int]:
    """(device, host) bytes: 16-bit weights on the device, and the 18 bytes per trainable parameter of gradients (16
    and 32-bit), fp32 weights and Adam's moments partitioned over the devices, or on the host if offloaded."""
    trainable = parameters if trainable is None else trainable
    if offload:
        return 2 * parameters, int(trainable * max(4 * devices, 16) * HOST_BUFFER_FACTOR)
    return 2 * parameters + int(18 * trainable / devices), int(parameters * 4 * devices * HOST_BUFFER_FACTOR)


def zero3_estimate(parameters: int, largest_layer: int, devices: int, offload: bool, offload_params: bool, trainable: int | None = None) -> tuple[int, int]:
    """(device, host) bytes: the largest layer gathered in 32-bit, and the states partitioned over the devices, or on
    the host (all 18 bytes with the parameters offloaded, 16 without): 2 a parameter for its 16-bit weights, 16 a
    trainable one for the rest."""
    gathered, trainable = 4 * largest_layer, parameters if trainable is None else trainable
    if not offload:
        return gathered + int((2 * parameters + 16 * trainable) / devices), int(largest_layer * 4 * devices * HOST_BUFFER_FACTOR)
    if offload_params:
        return gathered, int((2 * parameters + 16 * trainable) * HOST_BUFFER_FACTOR)
    return gathered + int(2 * parameters / devices), int(trainable * 16 * HOST_BUFFER_FACTOR)


def deepspeed_estimate(option: dict, size: ModelSize, workers: int) -> tuple[int, float]:
    """DeepSpeed's estimate of one worker's (device, host) memory for model states: its stage-2 estimator for stages
    1 and 2, the same on a single device for stage 0 (nothing partitioned), its stage-3 estimator for stage 3."""
    offload = option.get("offload_optimizer", False)
    if option["zero_stage"] == 3:
        device, host = zero3_estimate(size.parameters, size.largest_layer, workers, offload, option.get("offload_params", False), size.trainable)
        return device, host / workers  # host memory per node of `workers` devices
    partitions = 1 if option["zero_stage"] == 0 else workers
    device, host = zero2_estimate(size.parameters, partitions, offload, size.trainable)
    return device, host / partitions


def activation_bytes(job: JobConfig, size: ModelSize) -> int:
    """Activations of one micro batch kept for the backward pass (Korthikanti et al. 2022: s·b·h·(34 + 5·a·s/h) bytes
    per layer in 16-bit, twice that in fp32), plus the fp32 logits and their gradient. With activation checkpointing
    each layer keeps only its input (2·s·b·h bytes), and one layer at a time holds all of its own again."""
    s, b, h, a, t = job.data.seq_len, job.train.micro_batch_size, size.hidden, size.heads, job.parallelism.tensor
    width = 2 if job.deepspeed.precision == "fp32" else 1
    # tensor parallel: s·b·h·(10 + 24/t + 5·a·s/(h·t)) (the same paper); a pipeline's first stage holds P micro batches
    # of its L/P layers in flight (1F1B), as many activations as one micro batch through all layers
    per_layer = s * b * h * (10 + 24 / t + 5 * a * s / (h * t)) * width
    kept = size.layers * 2 * s * b * h * width + per_layer if job.train.activation_checkpointing else size.layers * per_layer
    return int(kept + 2 * 4 * s * b * size.vocab)


@dataclass(frozen=True)
class OptionPlan:
    name: str
    paper_bytes: float
    deepspeed_device_bytes: int
    deepspeed_host_bytes: float
    needed_bytes: float  # per worker, in the memory that limits it (the GPU's; on CPU, the machine's share)
    fits: bool


def job_option(job: JobConfig) -> dict:
    """The option the job itself sets."""
    return {key: getattr(job.deepspeed, key) for key in ("zero_stage", "offload_optimizer", "offload_params")}


def option_plan(job: JobConfig, option: dict, size: ModelSize, memory_per_worker: float) -> OptionPlan:
    """One option's memory per worker: ZeRO shards what the busiest worker holds over the data-parallel replicas."""
    replicas, worker = job.data_parallel_size, replace(size, parameters=size.worker_parameters)
    device, host = deepspeed_estimate(option, worker, replicas)
    frozen_bytes = 4 if job.deepspeed.precision == "fp32" else 2
    paper = paper_bytes(option["zero_stage"], worker.parameters, replicas, worker.worker_trainable, frozen_bytes)
    # On a GPU, offloaded states leave its memory; on CPU they stay in the same memory, so the paper's count holds.
    states = device if job.scaling.use_gpu else paper + CPU_PROCESS_BYTES
    needed = states + activation_bytes(job, size)
    return OptionPlan(option_name(option), paper, device, host, needed, needed <= memory_per_worker)


def plan(job: JobConfig, size: ModelSize, memory_per_worker: float) -> tuple[list[OptionPlan], str | None]:
    """Every option's memory per worker, and the first that fits (None if none does)."""
    options = [option_plan(job, option, size, memory_per_worker) for option in OPTIONS.values() if option["zero_stage"] <= job.parallelism.highest_zero_stage]
    return options, next((option.name for option in options if option.fits), None)
