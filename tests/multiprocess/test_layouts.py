"""Every way of sharing the model trains the same model: ZeRO stages 0-3, tensor and pipeline parallelism, each on
2 gloo ranks calling its layout's train_step directly, from the same saved weights on the same global batches. The
exports of the split models load as one whole Hugging Face model that computes what the data-parallel one does.

Tensor parallelism trains a Llama, against a data-parallel Llama: DeepSpeed's AutoTP refuses GPT-2.
All runs share one pair of processes: most of their time is the imports each process makes (transformers' model
code, and torch's compiler, which DeepSpeed imports when it builds an optimizer), not the training.
"""

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from distributed import run_on_ranks
from helpers import StandInTokenizer, tiny_job
from transformers import AutoModelForCausalLM

from orchestrator.config.job import ModelConfig
from orchestrator.config.load import validate
from orchestrator.data.feed import rank_rows
from orchestrator.models.build import build_model
from orchestrator.models.tasks import TASKS
from orchestrator.train.engine import build_engine, export_hf_model, partitioned_construction
from orchestrator.train.parallel import layout as parallel_layout
from orchestrator.train.schedules import build_schedule

pytestmark = pytest.mark.integration  # 2 processes importing torch, DeepSpeed and transformers: minutes on a busy machine

STEPS, GLOBAL_BATCH, SEQ_LEN, VOCAB = 5, 8, 32, 512
LEARNED_TOKENS = 64  # the batches draw from these only: a distribution 5 steps can start to learn
REL = 1e-3  # what tests/integration/test_training.py allows between layouts

DIMS = {
    "gpt2": {"layers": 2, "hidden": 64, "heads": 2, "ffn": 128, "max_positions": 64},
    "llama": {"layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2, "ffn": 128, "max_positions": 64},
}
ONE_REPLICA = {"micro_batch_size": 4, "grad_accum_steps": 2}  # the global batch of 2 ranks x 4, on one replica
MODEL_PARALLEL = {"deepspeed": {"zero_stage": 1}, "train": ONE_REPLICA}
# name -> (family, job sections), in the order they run. The model-parallel runs come last: their engines leave
# DeepSpeed's process-wide groups (deepspeed.utils.groups.mpu) set, and a data-parallel engine built after them fails.
RUNS = {
    **{f"gpt2-zero{stage}": ("gpt2", {"deepspeed": {"zero_stage": stage}}) for stage in range(4)},
    "llama-zero1": ("llama", {"deepspeed": {"zero_stage": 1}}),
    "llama-tensor": ("llama", {"parallelism": {"tensor": 2}, **MODEL_PARALLEL}),
    "gpt2-pipeline": ("gpt2", {"parallelism": {"pipeline": 2}, **MODEL_PARALLEL}),
}
EXPORTS = {"gpt2-zero3": "gpt2-zero0", "gpt2-pipeline": "gpt2-zero0", "llama-tensor": "llama-zero1"}  # -> data-parallel reference


def job(start: Path, family: str, sections: dict):
    """The integration tests' tiny job, training the saved model of `family`."""
    sections = {**sections, "train": {"max_steps": STEPS, **sections.get("train", {})}}
    return validate(tiny_job(Path("unused.jsonl"), **sections) | {"model": {"family": family, "pretrained": str(start / family)}})


def train(name: str, start: Path, batches: torch.Tensor, export: Path) -> list[float]:
    """One run, on this rank: the mean loss of each step over the global batch, as the worker loop logs it."""
    family, sections = RUNS[name]
    config = job(start, family, sections)
    world_size = dist.get_world_size()
    zero3_construction = partitioned_construction(config, world_size)  # noqa: F841 (held while the model lives)
    model = build_model(config.model, config.task, None, [], config.train.seed)
    layout = parallel_layout(config)
    engine = build_engine(config, layout.wrap(model), STEPS, world_size)
    data_rank, data_size = layout.data_rank(engine)
    losses = []
    for global_batch in batches:
        rows = rank_rows(torch.arange(len(global_batch)), data_rank, data_size, config.train.micro_batch_size)
        micro_batches = [{"input_ids": global_batch[part]} for part in rows]
        loss = layout.train_step(engine, [TASKS[config.task].model_inputs(batch) for batch in micro_batches]) / len(micro_batches)
        dist.all_reduce(loss)
        losses.append(loss.item() / world_size)
    if name in EXPORTS.keys() | EXPORTS.values():
        export_hf_model(engine, layout, str(export / name), torch.float32, is_writer=dist.get_rank() == 0)
    engine.destroy()
    return losses


def train_every_layout(start: Path, batches: torch.Tensor, export: Path) -> dict[str, list[float]]:
    return {name: train(name, start, batches, export) for name in RUNS}


@pytest.fixture(scope="module")
def start(tmp_path_factory) -> Path:
    """Random-init tiny models without dropout (each layout would draw its random numbers on other ranks), saved:
    every run loads the same weights (ZeRO-3 would initialise shard by shard, with other random numbers)."""
    directory = tmp_path_factory.mktemp("start")
    for family, dims in DIMS.items():
        model = build_model(ModelConfig(family=family, dims=dims, dropout=0.0), "causal_lm", StandInTokenizer(VOCAB), [], seed=0)
        model.save_pretrained(directory / family)
    return directory


@pytest.fixture(scope="module")
def batches() -> torch.Tensor:
    return torch.randint(0, LEARNED_TOKENS, (STEPS, GLOBAL_BATCH, SEQ_LEN), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def losses(start, batches, export) -> dict[str, list[float]]:
    """Each run's losses; the models of EXPORTS are written under `export`."""
    return run_on_ranks(train_every_layout, start, batches, export)[0]


def one_process_losses(start: Path, batches: torch.Tensor) -> list[float]:
    """The data-parallel GPT-2 job's steps in one process without DeepSpeed: torch's fused AdamW on the whole global
    batch, with the job's clipping and schedule."""
    config = job(start, "gpt2", {})
    model = AutoModelForCausalLM.from_pretrained(start / "gpt2")
    settings = config.train.optimizer
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, betas=settings.betas, eps=settings.eps, weight_decay=settings.weight_decay, fused=True)
    schedule = build_schedule(optimizer, config.train.schedule, STEPS)
    losses = []
    for global_batch in batches:
        loss = model(input_ids=global_batch, labels=global_batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def test_two_data_parallel_ranks_train_as_one_process_on_the_whole_batch(losses, start, batches):
    reference = one_process_losses(start, batches)
    assert reference[-1] < 0.95 * reference[0]  # it learns (the first step's learning rate is 0: warmup)
    assert losses["gpt2-zero0"] == pytest.approx(reference, rel=REL)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_stages_give_the_losses_of_stage_0(losses, stage):
    assert losses[f"gpt2-zero{stage}"] == pytest.approx(losses["gpt2-zero0"], rel=REL)


@pytest.mark.parametrize("split, reference", [("gpt2-pipeline", "gpt2-zero0"), ("llama-tensor", "llama-zero1")])
def test_model_parallel_trains_like_data_parallel(losses, split, reference):
    assert losses[split] == pytest.approx(losses[reference], rel=REL)
    assert losses[split][-1] < 0.95 * losses[split][0]


@pytest.mark.parametrize("split", ["gpt2-zero3", "gpt2-pipeline", "llama-tensor"])
def test_a_split_model_exports_one_whole_model(losses, export, batches, split):
    whole, split_model = (AutoModelForCausalLM.from_pretrained(export / name) for name in (EXPORTS[split], split))
    assert split_model.num_parameters() == whole.num_parameters()  # gathered, not one rank's part
    with torch.no_grad():
        torch.testing.assert_close(split_model(batches[0]).logits, whole(batches[0]).logits, rtol=REL, atol=REL)
