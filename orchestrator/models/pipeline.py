"""A Hugging Face causal LM as the layer sequence of a DeepSpeed PipelineModule: embeddings, the transformer blocks,
the final norm and the head, partitioned over pipeline stages.

The layers wrap the submodules of the whole model the job builds anyway (same seed, so the same weights as a
data-parallel run); each stage keeps the parameters of its own layers and frees the others. The head shares the
embedding matrix (GPT-2 ties them), so the first and the last stage both hold it and DeepSpeed sums its gradients.
"""

import functools

import deepspeed
import torch
from deepspeed.pipe import LayerSpec, PipelineModule, TiedLayerSpec
from torch import nn
from transformers.loss.loss_utils import ForCausalLMLoss


def causal_mask(hidden: torch.Tensor) -> torch.Tensor:
    """Additive mask hiding later positions. Given explicitly: blocks called one by one do not get the mask the
    whole model would build, and eager attention without one would look ahead."""
    length = hidden.shape[1]
    return torch.full((length, length), torch.finfo(hidden.dtype).min, dtype=hidden.dtype).triu(1)[None, None]


class Gpt2Embeddings(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.wte, self.wpe, self.drop = model.transformer.wte, model.transformer.wpe, model.transformer.drop

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.drop(self.wte(input_ids) + self.wpe(positions))


class Gpt2Block(nn.Module):
    def __init__(self, model, index: int):
        super().__init__()
        self.block = model.transformer.h[index]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.block(hidden, attention_mask=causal_mask(hidden))


class Gpt2FinalNorm(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.ln_f = model.transformer.ln_f

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.ln_f(hidden)


def tied_head(embeddings: Gpt2Embeddings, hidden: torch.Tensor) -> torch.Tensor:
    """The language-model head of GPT-2: the embedding matrix, transposed."""
    return nn.functional.linear(hidden, embeddings.wte.weight)


def gpt2_layers(model) -> list[LayerSpec]:
    blocks = [LayerSpec(Gpt2Block, model, index) for index in range(model.config.n_layer)]
    return [
        TiedLayerSpec("embeddings", Gpt2Embeddings, model, tied_weight_attr=["wte.weight"]),
        *blocks,
        LayerSpec(Gpt2FinalNorm, model),
        TiedLayerSpec("embeddings", Gpt2Embeddings, model, forward_fn=tied_head, tied_weight_attr=["wte.weight"]),
    ]


# model family -> its layer sequence (the families whose models.families entry lists "pipeline")
PIPELINE_LAYERS = {"gpt2": gpt2_layers}


def pipeline_module(model, family: str, stages: int) -> tuple[PipelineModule, dict[str, nn.Parameter]]:
    """The stages of `model`, and this stage's parameters by their name in the Hugging Face model (what the export
    gathers back into one). Parameters of the other stages are freed: a worker holds about 1/stages of the model."""
    if not model.config.tie_word_embeddings:
        raise ValueError("pipeline stages of an untied head are not implemented")  # validation keeps gpt2 tied
    deepspeed.init_distributed()  # joins Ray Train's process group: the stages' topology is made of it
    loss = functools.partial(ForCausalLMLoss, vocab_size=model.config.vocab_size)
    module = PipelineModule(layers=PIPELINE_LAYERS[family](model), num_stages=stages, loss_fn=loss, partition_method="parameters")
    own = {id(parameter) for parameter in module.parameters()}
    named = {}
    for name, parameter in model.named_parameters():
        if id(parameter) in own:
            named[name] = parameter
        else:
            parameter.data = torch.empty(0, dtype=parameter.dtype)
    return module, named
