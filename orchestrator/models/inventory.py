"""The parameters of each family's model, module by module, counted from its config's numbers: what `orchestrator
plan` needs (the total, the largest module, the linear layers tensor parallelism splits, the layers of a pipeline)
without building the model. Building it on the meta device needed torch and transformers, seconds to import.

Each family's count mirrors the Hugging Face model its task builds (transformers 5: models/<family>/modeling_*.py);
tests/unit/test_plan.py holds them against those models built from the same configs.
"""

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

from orchestrator.config.job import MAX_DIM, MAX_LAYERS, MAX_VOCAB, LoraConfig, is_named
from orchestrator.models.families import FAMILIES
from orchestrator.models.saved import saved_shapes


@dataclass(frozen=True)
class Weights:
    """One module's own parameters."""

    count: int
    linear: bool = False  # an nn.Linear: what tensor parallelism splits (GPT-2's Conv1D is not one)
    tied: bool = False  # the embedding matrix again (a tied head): in the total once


def linear(inputs: int, outputs: int, bias: bool = True, tied: bool = False) -> Weights:
    return Weights(inputs * outputs + (outputs if bias else 0), linear=True, tied=tied)


def conv1d(inputs: int, outputs: int) -> Weights:
    """GPT-2's Conv1D: a linear layer's weights and bias, in a module of its own kind."""
    return Weights(inputs * outputs + outputs)


def embedding(rows: int, width: int) -> Weights:
    return Weights(rows * width)


def norm(width: int, bias: bool = True) -> Weights:
    """LayerNorm (a scale and a bias), or RMSNorm and T5's LayerNorm (a scale only)."""
    return Weights(width * (2 if bias else 1))


def total(modules: list[Weights]) -> int:
    return sum(module.count for module in modules if not module.tied)


@dataclass(frozen=True)
class Inventory:
    modules: list[Weights]
    layers: int  # transformer blocks (an encoder-decoder's on both sides)
    pipeline_layers: tuple[int, ...] = ()  # parameters of each layer of its models/pipeline.py sequence, where it has one

    @property
    def parameters(self) -> int:
        return total(self.modules)

    @property
    def largest_module(self) -> int:
        return max(module.count for module in self.modules)

    @property
    def linear(self) -> int:
        return sum(module.count for module in self.modules if module.linear)


def gpt2(config: dict) -> Inventory:
    """GPT2LMHeadModel, its head tied to the token embedding unless the config unties it."""
    width, vocab = config["n_embd"], config["vocab_size"]
    inner = config["n_inner"] or 4 * width
    embeddings = [embedding(vocab, width), embedding(config["n_positions"], width)]
    attention = [conv1d(width, 3 * width), conv1d(width, width)]  # queries, keys and values in one; the projection
    # keys and values in one, queries, the projection, and its own norm
    cross_attention = [conv1d(width, 2 * width), conv1d(width, width), conv1d(width, width), norm(width)]
    block = [norm(width), *attention, norm(width), *(cross_attention if config["add_cross_attention"] else []), conv1d(width, inner), conv1d(inner, width)]
    layers = [embeddings, *[block] * config["n_layer"], [norm(width)]]
    return Inventory(
        modules=[*chain(*layers), linear(width, vocab, bias=False, tied=config["tie_word_embeddings"])],
        layers=config["n_layer"],
        pipeline_layers=tuple(total(layer) for layer in [*layers, embeddings]),  # the head: the embeddings layer again
    )


def llama(config: dict) -> Inventory:
    """LlamaForCausalLM: grouped-query attention, a gated feed-forward layer, RMS norms."""
    width, inner, vocab, heads = config["hidden_size"], config["intermediate_size"], config["vocab_size"], config["num_attention_heads"]
    head_width = config["head_dim"] or width // heads
    queries, keys = heads * head_width, (config["num_key_value_heads"] or heads) * head_width
    bias, mlp_bias = config["attention_bias"], config["mlp_bias"]
    attention = [linear(width, queries, bias), linear(width, keys, bias), linear(width, keys, bias), linear(queries, width, bias)]
    feed_forward = [linear(width, inner, mlp_bias), linear(width, inner, mlp_bias), linear(inner, width, mlp_bias)]
    block = [*attention, *feed_forward, norm(width, bias=False), norm(width, bias=False)]
    return Inventory(
        modules=[
            embedding(vocab, width),
            *block * config["num_hidden_layers"],
            norm(width, bias=False),
            linear(width, vocab, bias=False, tied=config["tie_word_embeddings"]),
        ],
        layers=config["num_hidden_layers"],
    )


def bert(config: dict) -> Inventory:
    """BertForSequenceClassification: the encoder, its pooler and a linear classifier."""
    width, inner = config["hidden_size"], config["intermediate_size"]
    embeddings = [
        embedding(config["vocab_size"], width),
        embedding(config["max_position_embeddings"], width),
        embedding(config["type_vocab_size"], width),
        norm(width),
    ]
    attention = [linear(width, width), linear(width, width), linear(width, width), linear(width, width), norm(width)]  # queries, keys, values; output
    block = [*attention, *(attention if config["add_cross_attention"] else []), linear(width, inner), linear(inner, width), norm(width)]
    head = [linear(width, width), linear(width, config["num_labels"])]  # the pooler, the classifier
    return Inventory(modules=[*embeddings, *block * config["num_hidden_layers"], *head], layers=config["num_hidden_layers"])


def t5(config: dict) -> Inventory:
    """T5ForConditionalGeneration: relative position biases in each stack's first block; the head is tied to the shared
    embedding (transformers 5 ties T5's always), which the encoder and the decoder embed with too."""
    width, vocab, heads, inner = config["d_model"], config["vocab_size"], config["num_heads"], config["d_ff"]
    heads_width = heads * config["d_kv"]
    decoder_layers = config["num_decoder_layers"] or config["num_layers"]
    gated = config["feed_forward_proj"].split("-")[0] == "gated"  # two input projections, one of them the gate
    attention = [*[linear(width, heads_width, bias=False)] * 3, linear(heads_width, width, bias=False), norm(width, bias=False)]
    feed_forward = [*[linear(width, inner, bias=False)] * (2 if gated else 1), linear(inner, width, bias=False), norm(width, bias=False)]
    position_bias = embedding(config["relative_attention_num_buckets"], heads)
    encoder = [position_bias, *[*attention, *feed_forward] * config["num_layers"], norm(width, bias=False)]
    decoder = [position_bias, *[*attention, *attention, *feed_forward] * decoder_layers, norm(width, bias=False)]
    return Inventory(
        modules=[embedding(vocab, width), *encoder, *decoder, linear(width, vocab, bias=False, tied=True)],
        layers=config["num_layers"] + decoder_layers,
    )


@dataclass(frozen=True)
class Architecture:
    count: Callable[[dict], Inventory]
    defaults: dict  # its config class's default of each key the count reads (configuration_*.py): what a config.json may leave out
    aliases: dict[str, str]  # its config class's attribute_map: other names a config.json may give those keys

    def config(self, given: dict) -> dict:
        """The keys the count reads: the given ones (an alias wins, as in transformers) over the defaults."""
        given = given | {self.aliases[key]: value for key, value in given.items() if key in self.aliases}
        return {key: given.get(key, default) for key, default in self.defaults.items()}


def saved_inventory(directory: Path, layers: int) -> Inventory:
    """The parameters a pretrained model's safetensors files hold, module by module: any architecture. A tied head is
    saved once, so counted once; a head the task adds (a classifier on a language model) is not in the files, and is
    small."""
    modules: Counter[str] = Counter()
    for name, shape in saved_shapes(directory).items():
        modules[name.rpartition(".")[0]] += math.prod(shape)
    return Inventory(modules=[Weights(count) for count in modules.values()], layers=layers)


def lora_parameters(shapes: dict[str, list[int]], lora: LoraConfig) -> int:
    """The adapters' parameters: r·(inputs + outputs) for each weight matrix of a target module. all-linear: the
    matrices of the numbered transformer layers (peft's choice of every linear layer but the head, less the few
    outside the layers: a pooler, a projection)."""
    matrices = {name.removesuffix(".weight"): shape for name, shape in shapes.items() if name.endswith(".weight") and len(shape) == 2}
    if lora.target_modules == "all-linear":
        targets = [shape for module, shape in matrices.items() if any(part.isdigit() for part in module.split("."))]
    else:
        targets = [shape for module, shape in matrices.items() if any(is_named(module, target) for target in lora.target_modules)]
    return sum(lora.r * sum(shape) for shape in targets)


# family (a key of models.families) -> the model its task builds
ARCHITECTURES: dict[str, Architecture] = {
    "gpt2": Architecture(
        gpt2,
        defaults={
            "vocab_size": 50257,
            "n_positions": 1024,
            "n_embd": 768,
            "n_layer": 12,
            "n_head": 12,
            "n_inner": None,
            "add_cross_attention": False,
            "tie_word_embeddings": True,
        },
        aliases={"hidden_size": "n_embd", "max_position_embeddings": "n_positions", "num_attention_heads": "n_head", "num_hidden_layers": "n_layer"},
    ),
    "llama": Architecture(
        llama,
        defaults={
            "vocab_size": 32000,
            "hidden_size": 4096,
            "intermediate_size": 11008,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": None,
            "head_dim": None,
            "attention_bias": False,
            "mlp_bias": False,
            "tie_word_embeddings": False,
        },
        aliases={},
    ),
    "bert": Architecture(
        bert,
        defaults={
            "vocab_size": 30522,
            "hidden_size": 768,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "intermediate_size": 3072,
            "max_position_embeddings": 512,
            "type_vocab_size": 2,
            "is_decoder": False,
            "add_cross_attention": False,
            "num_labels": 2,
        },
        aliases={},
    ),
    "t5": Architecture(
        t5,
        defaults={
            "vocab_size": 32128,
            "d_model": 512,
            "d_kv": 64,
            "d_ff": 2048,
            "num_layers": 6,
            "num_decoder_layers": None,
            "num_heads": 8,
            "relative_attention_num_buckets": 32,
            "feed_forward_proj": "relu",
        },
        aliases={"hidden_size": "d_model", "num_attention_heads": "num_heads", "num_hidden_layers": "num_layers", "head_dim": "d_kv"},
    ),
}

# The largest number a config key may hold: the job schema's bound on the same dimension (config/job.py).
LIMITS = {"vocab_size": MAX_VOCAB} | dict.fromkeys(("n_layer", "num_hidden_layers", "num_layers", "num_decoder_layers"), MAX_LAYERS)


def value_problem(key: str, value, default) -> str | None:
    """What is wrong with one value of a config, judged by the type of its default; None if nothing."""
    if isinstance(default, bool):
        return None if isinstance(value, bool) else f"{key}: true or false (got {value!r})"
    if isinstance(default, str):
        return None if isinstance(value, str) else f"{key}: text (got {value!r})"
    if value is None and default is None:
        return None
    limit = LIMITS.get(key, MAX_DIM)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        return f"{key}: a whole number from 1 to {limit:,}{', or null' if default is None else ''} (got {value!r})"
    return None


def config_problem(family: str, config: dict) -> str | None:
    """What makes a model config (a pretrained model's, which the job's schema does not check) one that no model has,
    in the keys the count reads: a value out of bounds or of the wrong type, a width its heads do not split, a
    combination the architecture refuses."""
    for key, default in ARCHITECTURES[family].defaults.items():
        if problem := value_problem(key, config[key], default):
            return problem
    keys = FAMILIES[family].dim_keys
    hidden, heads = config[keys["hidden"]], config[keys["heads"]]
    if FAMILIES[family].heads_split_hidden and hidden % heads:
        return f"{keys['heads']}: {heads} heads cannot split a hidden width of {hidden}"
    if config.get("add_cross_attention") and config.get("is_decoder") is False:  # BERT's layers refuse it (GPT-2 has no is_decoder)
        return "add_cross_attention: cross-attention layers belong to a decoder (is_decoder: true)"
    return None
