"""Memory per worker before anything runs (`orchestrator plan`): model states for each ZeRO stage and offload choice,
as the ZeRO paper counts them and as DeepSpeed's own estimators do, plus activations, against what a worker has.
DeepSpeed's estimators are a few lines of arithmetic, written out here: importing DeepSpeed for them took seconds.

The model is built on the meta device (no memory, no weights read), so its parameter count is exact. Tensor and
pipeline parallelism first split the parameters (what the busiest worker holds is counted), then ZeRO shards that
worker's states over the data-parallel replicas.
"""

import math
from dataclasses import dataclass, replace

import torch
import transformers

from orchestrator.config.errors import UserError
from orchestrator.config.job import MAX_LAYERS, JobConfig
from orchestrator.config.paths import expand_path
from orchestrator.models.build import hf_config, label_keys
from orchestrator.models.tasks import TASKS


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


class _Vocabulary:
    """What build_model reads of a tokenizer: its size and two valid token ids."""

    eos_token_id, pad_token_id = 0, 1

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size


def vocabulary_size(job: JobConfig) -> int:
    """The trained tokenizer's configured size (an upper bound: a small corpus may give fewer), or a local one's."""
    if job.data.tokenizer.path:
        from orchestrator.data.tokenizers import load_tokenizer

        return len(load_tokenizer(job.data.tokenizer.path))
    return job.data.tokenizer.vocab_size


def meta_model(job: JobConfig) -> torch.nn.Module:
    """The job's model on the meta device. Dimensions it cannot have are the job's mistake: too many layers to count
    in seconds (each is built), or sizes that torch or the architecture refuse (a width that overflows a tensor's
    size, a width that the heads do not divide)."""
    labels = job.data.labels or ["0", "1"]  # a classification head's size hardly matters
    if job.model.pretrained:
        field = "model.pretrained"
        config = transformers.AutoConfig.from_pretrained(expand_path(job.model.pretrained), **label_keys(labels))
    else:
        field = "model.dims"
        labels = labels if job.task == "sequence_classification" else []
        config = hf_config(job.model, _Vocabulary(vocabulary_size(job)), labels)
    layers = config.num_hidden_layers + getattr(config, "num_decoder_layers", 0)
    if layers > MAX_LAYERS:
        where = field if job.model.pretrained else f"{field}.layers"
        raise UserError(f"{where}: plan builds each layer to count it, at most {MAX_LAYERS:,} (got {layers:,})")
    try:
        with torch.device("meta"):
            return getattr(transformers, TASKS[job.task].auto_class).from_config(config)
    except (ValueError, RuntimeError) as err:  # raised by the architecture's checks and torch's size arithmetic
        raise UserError(f"{field}: no model has these dimensions: {' '.join(str(err).split())}") from None


def model_size(job: JobConfig) -> ModelSize:
    model = meta_model(job)
    config = model.config
    return ModelSize(
        parameters=sum(p.numel() for p in model.parameters()),
        worker_parameters=largest_worker_parameters(job, model),
        largest_layer=max(sum(p.numel() for p in module.parameters(recurse=False)) for module in model.modules()),
        layers=config.num_hidden_layers + getattr(config, "num_decoder_layers", 0),  # encoder-decoders have both
        hidden=config.hidden_size,
        heads=config.num_attention_heads,
        vocab=config.vocab_size,
    )


def count(module: torch.nn.Module, recurse: bool = True) -> int:
    return sum(parameter.numel() for parameter in module.parameters(recurse=recurse))


def largest_worker_parameters(job: JobConfig, model: torch.nn.Module) -> int:
    """Tensor parallel: AutoTP splits every linear layer (the head included) over the T ranks, the embeddings and
    norms stay whole. Pipeline: the stage DeepSpeed's own balanced partition gives the most (the tied embedding
    counts on the first and the last stage)."""
    split = job.parallelism
    if split.layout == "tensor":
        linear = sum(count(module, recurse=False) for module in model.modules() if isinstance(module, torch.nn.Linear))
        return count(model) - linear + math.ceil(linear / split.tensor)
    if split.layout == "pipeline":
        # deepspeed: only for pipelines (models/pipeline.py builds on it); DeepSpeed's own balanced partition
        from deepspeed.runtime.utils import partition_balanced

        from orchestrator.models.pipeline import PIPELINE_LAYERS

        layers = [count(spec.build()) for spec in PIPELINE_LAYERS[job.model.family](model)]
        bounds = partition_balanced(weights=layers, num_parts=split.pipeline)  # what PipelineModule does
        return max(sum(layers[start:end]) for start, end in zip(bounds, bounds[1:]))
    return count(model)


def paper_bytes(stage: int, parameters: int, workers: int) -> float:
    """ZeRO paper (Rajbhandari et al. 2020, section 5), mixed-precision Adam: 2 (16-bit weights) + 2 (16-bit
    gradients) + 12 (fp32 weights, momentum, variance) bytes per parameter, each term divided among the workers from
    the stage that partitions it on."""
    terms = {"weights": 2 * parameters, "grads": 2 * parameters, "optimizer": 12 * parameters}
    divided = {0: (), 1: ("optimizer",), 2: ("optimizer", "grads"), 3: ("optimizer", "grads", "weights")}[stage]
    return sum(value / workers if name in divided else value for name, value in terms.items())


# DeepSpeed's estimators (deepspeed/runtime/zero/stage_1_and_2.py estimate_zero2_model_states_mem_needs and
# stage3.py estimate_zero3_model_states_mem_needs, on one node, with ZeRO-3's zero_init): host memory is per node,
# with this margin on it.
HOST_BUFFER_FACTOR = 1.5


def zero2_estimate(parameters: int, devices: int, offload: bool) -> tuple[int, int]:
    """(device, host) bytes: 16-bit weights on the device, and the 18 bytes per parameter of gradients (16 and 32-bit),
    fp32 weights and Adam's moments partitioned over the devices, or on the host if offloaded."""
    if offload:
        return 2 * parameters, int(parameters * max(4 * devices, 16) * HOST_BUFFER_FACTOR)
    return 2 * parameters + int(18 * parameters / devices), int(parameters * 4 * devices * HOST_BUFFER_FACTOR)


def zero3_estimate(parameters: int, largest_layer: int, devices: int, offload: bool, offload_params: bool) -> tuple[int, int]:
    """(device, host) bytes: the largest layer gathered in 32-bit, and the states partitioned over the devices, or on
    the host (all 18 bytes with the parameters offloaded, 16 without)."""
    gathered = 4 * largest_layer
    if not offload:
        return gathered + int(18 * parameters / devices), int(largest_layer * 4 * devices * HOST_BUFFER_FACTOR)
    if offload_params:
        return gathered, int(parameters * 18 * HOST_BUFFER_FACTOR)
    return gathered + int(2 * parameters / devices), int(parameters * 16 * HOST_BUFFER_FACTOR)


def deepspeed_estimate(option: dict, size: ModelSize, workers: int) -> tuple[int, float]:
    """DeepSpeed's estimate of one worker's (device, host) memory for model states: its stage-2 estimator for stages
    1 and 2, the same on a single device for stage 0 (nothing partitioned), its stage-3 estimator for stage 3."""
    offload = option.get("offload_optimizer", False)
    if option["zero_stage"] == 3:
        device, host = zero3_estimate(size.parameters, size.largest_layer, workers, offload, option.get("offload_params", False))
        return device, host / workers  # host memory per node of `workers` devices
    partitions = 1 if option["zero_stage"] == 0 else workers
    device, host = zero2_estimate(size.parameters, partitions, offload)
    return device, host / partitions


def activation_bytes(job: JobConfig, size: ModelSize) -> int:
    """Activations of one micro batch kept for the backward pass, without recomputation (Korthikanti et al. 2022:
    s·b·h·(34 + 5·a·s/h) bytes per layer in 16-bit, twice that in fp32), plus the fp32 logits and their gradient."""
    s, b, h, a, t = job.data.seq_len, job.train.micro_batch_size, size.hidden, size.heads, job.parallelism.tensor
    # tensor parallel: s·b·h·(10 + 24/t + 5·a·s/(h·t)) (the same paper); a pipeline's first stage holds P micro batches
    # of its L/P layers in flight (1F1B), as many activations as one micro batch through all layers
    per_layer = s * b * h * (10 + 24 / t + 5 * a * s / (h * t)) * (2 if job.deepspeed.precision == "fp32" else 1)
    return int(size.layers * per_layer + 2 * 4 * s * b * size.vocab)


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
    paper = paper_bytes(option["zero_stage"], worker.parameters, replicas)
    # On a GPU, offloaded states leave its memory; on CPU they stay in the same memory, so the paper's count holds.
    states = device if job.scaling.use_gpu else paper + CPU_PROCESS_BYTES
    needed = states + activation_bytes(job, size)
    return OptionPlan(option_name(option), paper, device, host, needed, needed <= memory_per_worker)


def plan(job: JobConfig, size: ModelSize, memory_per_worker: float) -> tuple[list[OptionPlan], str | None]:
    """Every option's memory per worker, and the first that fits (None if none does)."""
    options = [option_plan(job, option, size, memory_per_worker) for option in OPTIONS.values() if option["zero_stage"] <= job.parallelism.highest_zero_stage]
    return options, next((option.name for option in options if option.fits), None)
