"""The DeepSpeed engine of a single worker, built in this process (a gloo process group of one)."""

import pytest
import torch
import torch.distributed as dist
from helpers import StandInTokenizer

from orchestrator.config.load import validate
from orchestrator.models.build import build_model
from orchestrator.train.engine import build_engine
from orchestrator.train.local import end_process_group


@pytest.fixture(scope="module")
def one_process_group(deepspeed_of_one_rank):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LOCAL_RANK", "0")  # what Ray Train sets on its workers, and DeepSpeed reads
        dist.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)
        yield
        end_process_group()


def single_worker_engine(stage: int, precision: str):
    job = validate(
        {
            "model": {"family": "gpt2", "dims": {"layers": 2, "hidden": 32, "heads": 2, "ffn": 64, "max_positions": 16}},
            "data": {"paths": ["unused.jsonl"], "seq_len": 16},
            "train": {"max_steps": 4, "micro_batch_size": 2, "grad_accum_steps": 2},
            "deepspeed": {"zero_stage": stage, "precision": precision},
            "scaling": {"num_workers": 1},
        }
    )
    return build_engine(job, build_model(job.model, job.task, StandInTokenizer(256), [], seed=0), total_steps=4, world_size=1)


def losses(engine, steps: int = 4) -> list[float]:
    """Micro-batch losses of `steps` optimizer steps of 2 accumulated micro batches, on fixed random tokens."""
    tokens = torch.Generator().manual_seed(1)
    torch.manual_seed(0)  # dropout, as the training loop seeds it after building the engine
    seen = []
    for _ in range(steps * 2):
        batch = torch.randint(0, 256, (2, 16), generator=tokens)
        loss = engine(input_ids=batch, labels=batch).loss
        engine.backward(loss)
        engine.step()
        seen.append(loss.item())
    return seen


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_lone_zero0_worker_skips_the_gradient_reduction_and_trains_the_same_bits(one_process_group, precision):
    skipping = single_worker_engine(0, precision)
    assert skipping.enable_backward_allreduce is False
    reducing = single_worker_engine(0, precision)
    reducing.enable_backward_allreduce = True  # what DeepSpeed does by default
    assert losses(skipping) == losses(reducing)


def test_zero_stages_keep_their_own_reduction(one_process_group):
    assert single_worker_engine(2, "bf16").enable_backward_allreduce is True
