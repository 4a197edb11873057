"""How a job's workers share the model: data parallel (every worker a whole replica, ZeRO sharding its states),
tensor parallel (DeepSpeed AutoTP splits each linear layer over `parallelism.tensor` workers) or pipeline parallel
(a DeepSpeed PipelineModule puts the layers on `parallelism.pipeline` stages). The worker loop is the same for all
three; a layout says what DeepSpeed gets, which workers share a batch, how an optimizer step and an evaluation batch
run, and how the whole model is gathered back for the export.

The workers of one tensor- or pipeline-parallel group train on the same batch: data/feed.py hands out batches by
data-parallel rank, and those workers share it.
"""

import contextlib
import io
from collections.abc import Callable

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.utils import groups

from orchestrator.config.job import JobConfig

Inputs = dict[str, torch.Tensor]  # the model's keyword arguments for one micro batch (Task.model_inputs)


def join_process_group() -> None:
    """DeepSpeed joins Ray Train's process group (torch.distributed, already set up); later calls return at once.
    DeepSpeed prints then that it built its CPU collectives, on every rank of every job: not for the job log (Ray
    Train's workers also turn a print into a log record: environment.py drops that one)."""
    with contextlib.redirect_stdout(io.StringIO()):
        deepspeed.init_distributed()


class DataParallel:
    """Every worker holds the whole model (ZeRO may shard its states) and trains on its own micro batches."""

    def __init__(self, job: JobConfig):
        self.job = job

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """What deepspeed.initialize gets."""
        return model

    def data_rank(self, engine) -> tuple[int, int]:
        """(this worker's data-parallel rank, data-parallel size): which share of each global batch it trains on."""
        return dist.get_rank(), dist.get_world_size()

    def train_step(self, engine, micro_batches: list[Inputs], at_fullest: Callable[[], None] | None = None) -> torch.Tensor:
        """One optimizer step over this worker's micro batches; returns the sum of their losses. `at_fullest` runs
        when the model states are at their fullest: gradients reduced, optimizer states made by the step before."""
        total = torch.zeros(1)
        for inputs in micro_batches:  # DeepSpeed accumulates, and steps the optimizer after the last one
            loss = engine(**inputs).loss
            engine.backward(loss)
            if at_fullest and inputs is micro_batches[-1]:
                at_fullest()
            engine.step()
            total += loss.detach().float()
        return total

    def eval_batch(self, engine, inputs: Inputs):
        """(loss, model outputs or None) of one validation micro batch."""
        outputs = engine(**inputs)
        return outputs.loss, outputs

    def full_state_dict(self, engine, is_writer: bool) -> dict | None:
        """The whole model's weights by Hugging Face name, on the writer. Under ZeRO-3 every rank takes part."""
        with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None):
            return dict(engine.module.state_dict()) if is_writer else None

    def hf_model(self, engine) -> torch.nn.Module:
        """The Hugging Face model whose save_pretrained writes the export."""
        return engine.module


class TensorParallel(DataParallel):
    """DeepSpeed's automatic tensor parallelism (the config's tensor_parallel.autotp_size): deepspeed.initialize
    replaces the model's linear layers by ones holding 1/T of the weights; ZeRO 0-2 shards the rest over the
    data-parallel dimension."""

    def data_rank(self, engine) -> tuple[int, int]:
        return groups.get_data_parallel_rank(), groups.get_data_parallel_world_size()

    def full_state_dict(self, engine, is_writer: bool) -> dict | None:
        # DeepSpeed's own gather of the replaced layers' shards (what engine.save_16bit_model writes): every rank
        # takes part, rank 0 gets the whole model.
        state = engine._consolidated_16bit_state_dict()
        return state if is_writer else None


class PipelineParallel(DataParallel):
    """DeepSpeed's pipeline engine: each of P stages holds a slice of the layers, and a step runs the micro batches
    through the stages (DeepSpeed's 1F1B schedule); train.grad_accum_steps is the number of micro batches."""

    def __init__(self, job: JobConfig):
        super().__init__(job)
        self.model = None
        self.own_parameters: dict[str, torch.nn.Parameter] = {}

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        from orchestrator.models.pipeline import pipeline_module

        self.model = model
        join_process_group()
        module, self.own_parameters = pipeline_module(model, self.job.model.family, self.job.parallelism.pipeline)
        return module

    def data_rank(self, engine) -> tuple[int, int]:
        return engine.grid.get_data_parallel_rank(), engine.grid.get_data_parallel_world_size()

    @staticmethod
    def _pairs(micro_batches: list[Inputs]):
        # the first stage takes the inputs, the last one the labels
        return iter([(inputs["input_ids"], inputs["labels"]) for inputs in micro_batches])

    def train_step(self, engine, micro_batches: list[Inputs], at_fullest: Callable[[], None] | None = None) -> torch.Tensor:
        loss = engine.train_batch(self._pairs(micro_batches))  # the mean over micro batches, on every stage
        if at_fullest:
            at_fullest()
        return loss.detach().float() * len(micro_batches)

    def eval_batch(self, engine, inputs: Inputs):
        return engine.eval_batch(self._pairs([inputs]), num_micro_batches=1), None

    def full_state_dict(self, engine, is_writer: bool) -> dict | None:
        """Each stage's first data-parallel replica sends its parameters to the writer."""
        own = {name: parameter.detach().clone() for name, parameter in self.own_parameters.items()}
        gathered = [None] * dist.get_world_size() if is_writer else None
        dist.gather_object(own if engine.grid.data_parallel_id == 0 else {}, gathered, dst=0)
        # Stages that share a layer (GPT-2's tied embedding layer, on the first and last stage) each send it; the
        # first stage's copy wins, since only it trains the position embeddings that layer also holds.
        return {name: tensor for part in reversed(gathered) for name, tensor in part.items()} if is_writer else None

    def hf_model(self, engine) -> torch.nn.Module:
        return self.model


LAYOUTS = {"data": DataParallel, "tensor": TensorParallel, "pipeline": PipelineParallel}  # ParallelismConfig.layout


def layout(job: JobConfig) -> DataParallel:
    return LAYOUTS[job.parallelism.layout](job)
