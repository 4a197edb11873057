"""`orchestrator plan`: the model's parameters counted from its config, as the model itself holds them, and memory per
worker for each ZeRO option, in agreement with DeepSpeed's estimators."""

import json
import math
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import transformers
from deepspeed.runtime.utils import partition_balanced as deepspeeds_partition_balanced
from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
from helpers import REPO, StandInTokenizer, tiny_job, write_job
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.config import load_job
from orchestrator.config.job import ParallelismConfig, TokenizerConfig
from orchestrator.config.paths import expand_path
from orchestrator.data.tokenizers import load_tokenizer, train_tokenizer
from orchestrator.models.build import build_model, hf_config, label_keys
from orchestrator.models.families import FAMILIES
from orchestrator.models.inventory import ARCHITECTURES, config_problem, lora_parameters
from orchestrator.models.pipeline import PIPELINE_LAYERS
from orchestrator.models.saved import saved_shapes
from orchestrator.models.tasks import TASKS
from orchestrator.train.plan import (
    OPTIONS,
    ModelSize,
    activation_bytes,
    counted_size,
    deepspeed_estimate,
    model_size,
    option_name,
    paper_bytes,
    partition_balanced,
    plan,
    tokenizer_size,
)

MINILM = Path("~/.cache/orchestrator/models/all-MiniLM-L6-v2").expanduser()  # the fortunes example's (cluster/prepare_data.py)
SPLITS = [ParallelismConfig(), ParallelismConfig(tensor=2), ParallelismConfig(tensor=3), ParallelismConfig(pipeline=2), ParallelismConfig(pipeline=3)]
EXAMPLES = settings(max_examples=15, deadline=None, derandomize=True, database=None)  # each example builds a model


@pytest.fixture
def job(corpus, tmp_path):
    return load_job(write_job(tmp_path / "job.yaml", tiny_job(corpus)))


def model_class_of(family: str) -> str:
    """The transformers auto class that builds the family's models as its inventory counts them: the first task's that
    trains it (causal_lm and sft build one causal LM; bert's inventory is the sequence classifier's, whose pooler a
    question-answering model lacks)."""
    return next(task.auto_class for task in TASKS.values() if family in task.families)


def meta_sizes(family: str, config: transformers.PretrainedConfig, splits: list[ParallelismConfig]) -> list[ModelSize]:
    """What plan counted before models/inventory.py: the model its task builds, on the meta device, its parameters
    counted module by module; tensor parallelism splitting every nn.Linear, pipelines cut by DeepSpeed's own partition."""
    with torch.device("meta"):
        model = getattr(transformers, model_class_of(family)).from_config(config)

    def count(module: torch.nn.Module, recurse: bool = True) -> int:
        return sum(parameter.numel() for parameter in module.parameters(recurse=recurse))

    def busiest_worker(split: ParallelismConfig) -> int:
        if split.layout == "pipeline":
            layers = [count(spec.build()) for spec in PIPELINE_LAYERS[family](model)]
            bounds = deepspeeds_partition_balanced(layers, split.pipeline)
            return max(sum(layers[start:end]) for start, end in zip(bounds, bounds[1:]))
        linear = sum(count(module, recurse=False) for module in model.modules() if isinstance(module, torch.nn.Linear))
        return count(model) - linear + math.ceil(linear / split.tensor)

    size = ModelSize(
        parameters=count(model),
        worker_parameters=0,
        largest_layer=max(count(module, recurse=False) for module in model.modules()),
        layers=config.num_hidden_layers + getattr(config, "num_decoder_layers", 0),  # encoder-decoders have both
        hidden=config.hidden_size,
        heads=config.num_attention_heads,
        vocab=config.vocab_size,
    )
    return [replace(size, worker_parameters=busiest_worker(split)) for split in splits]


def splits_of(family: str) -> list[ParallelismConfig]:
    return [split for split in SPLITS if split.layout != "pipeline" or family in PIPELINE_LAYERS]


HEAD_WIDTHS = st.integers(1, 6)
EVEN_HEAD_WIDTHS = st.integers(1, 3).map(lambda half: 2 * half)  # rotary position embeddings turn pairs of dimensions


@st.composite
def heads_and_width(draw, heads_key: str, hidden_key: str, head_widths: st.SearchStrategy = HEAD_WIDTHS) -> dict:
    heads = draw(st.integers(1, 4))
    return {heads_key: heads, hidden_key: heads * draw(head_widths)}


def optional(**keys) -> st.SearchStrategy:
    """Keys a config may give or leave to its class's default."""
    return st.fixed_dictionaries({}, optional=keys)


LAYERS, WIDTHS, VOCABULARIES = st.integers(1, 3), st.integers(1, 24), st.integers(3, 50)  # the default special tokens' ids are 0-2


@st.composite
def gpt2_configs(draw) -> dict:
    hidden_key = draw(st.sampled_from(["n_embd", "hidden_size"]))  # the config class's name or its alias
    config = draw(heads_and_width("n_head", hidden_key)) | {"n_layer": draw(LAYERS), "vocab_size": draw(VOCABULARIES), "n_positions": draw(WIDTHS)}
    return config | draw(optional(n_inner=WIDTHS, add_cross_attention=st.booleans(), tie_word_embeddings=st.booleans()))


@st.composite
def llama_configs(draw) -> dict:
    config = draw(heads_and_width("num_attention_heads", "hidden_size", EVEN_HEAD_WIDTHS))
    heads = config["num_attention_heads"]
    config |= {"num_hidden_layers": draw(LAYERS), "intermediate_size": draw(WIDTHS), "vocab_size": draw(VOCABULARIES)}
    kv_heads = st.sampled_from([kv for kv in range(1, heads + 1) if heads % kv == 0])  # grouped-query attention
    booleans = dict.fromkeys(("attention_bias", "mlp_bias", "tie_word_embeddings"), st.booleans())
    return config | draw(optional(num_key_value_heads=kv_heads, head_dim=EVEN_HEAD_WIDTHS, **booleans))


@st.composite
def bert_configs(draw) -> dict:
    config = draw(heads_and_width("num_attention_heads", "hidden_size"))
    config |= {"num_hidden_layers": draw(LAYERS), "intermediate_size": draw(WIDTHS), "vocab_size": draw(VOCABULARIES)}
    config |= {"max_position_embeddings": draw(WIDTHS), "num_labels": draw(st.integers(1, 6))}
    decoder = draw(st.sampled_from([{}, {"is_decoder": True}, {"is_decoder": True, "add_cross_attention": True}]))
    return config | decoder | draw(optional(type_vocab_size=st.integers(1, 3)))


@st.composite
def t5_configs(draw) -> dict:
    config = draw(heads_and_width("num_heads", "d_model")) | {"num_layers": draw(LAYERS), "d_ff": draw(WIDTHS), "vocab_size": draw(VOCABULARIES)}
    head_width = draw(optional(**{draw(st.sampled_from(["d_kv", "head_dim"])): HEAD_WIDTHS}))
    feed_forward = st.sampled_from(["relu", "gelu", "gated-gelu", "gated-silu"])
    return config | head_width | draw(optional(num_decoder_layers=LAYERS, relative_attention_num_buckets=st.integers(1, 8), feed_forward_proj=feed_forward))


CONFIGS = {"gpt2": gpt2_configs(), "llama": llama_configs(), "bert": bert_configs(), "t5": t5_configs()}


def test_every_family_has_an_inventory_of_the_one_task_that_trains_it():
    assert set(ARCHITECTURES) == set(FAMILIES) == set(CONFIGS)
    assert all(model_class_of(family) for family in FAMILIES)  # one model class each: the model its inventory counts
    assert {family for family in FAMILIES if ARCHITECTURES[family].count(ARCHITECTURES[family].config({})).pipeline_layers} == set(PIPELINE_LAYERS)


@pytest.mark.parametrize("family", FAMILIES)
@EXAMPLES
@given(data=st.data())
def test_the_inventory_counts_what_the_model_holds(family, data):
    """Parameters, the largest module, the busiest worker of each split and the dimensions, as the model built from the
    same config has them: sizes, tied and untied heads, grouped-query attention, biases, cross-attention, gating."""
    keys, splits = data.draw(CONFIGS[family], label="config"), splits_of(family)
    config_class = getattr(transformers, FAMILIES[family].config_class)
    config = ARCHITECTURES[family].config(keys)
    assert config_problem(family, config) is None
    assert [counted_size(family, config, split) for split in splits] == meta_sizes(family, config_class(**keys), splits)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_inventory_knows_the_config_classes_defaults(family):
    """GPT-2 small, Llama 7B, BERT base, T5 small: what a config.json that gives no dimension builds."""
    config, splits = ARCHITECTURES[family].config({}), splits_of(family)
    config_class = getattr(transformers, FAMILIES[family].config_class)
    assert [counted_size(family, config, split) for split in splits] == meta_sizes(family, config_class(), splits)


# A model an example job exports for another to start from (jobs/translate-sft-lora.yaml tunes gpt-tiny's)
EXPORTED_BY = {"~/.cache/orchestrator/models/gpt-tiny": "gpt-tiny.yaml"}


@pytest.mark.parametrize("path", sorted((REPO / "jobs").glob("*.yaml")), ids=lambda path: path.stem)
def test_plan_counts_each_example_job_as_its_model_holds(path, tmp_path):
    """The config plan reads from the job (random-init dimensions, a tokenizer, a pretrained config.json) is the one
    the model is built from; LoRA adds its adapters (counted against peft in test_lora.py)."""
    job = load_job(path)
    if job.model.pretrained in EXPORTED_BY:  # not there before the other job ran: a model of the shape it exports
        source = load_job(REPO / "jobs" / EXPORTED_BY[job.model.pretrained])
        vocabulary = StandInTokenizer(source.data.tokenizer.vocab_size)
        build_model(source.model, source.task, vocabulary, [], seed=0).save_pretrained(tmp_path / "export")
        job = load_job(path, [f"model.pretrained={tmp_path / 'export'}"])
    labels = job.data.labels or ["0", "1"]  # what plan assumes of a classifier's labels
    if job.model.pretrained:
        config = transformers.AutoConfig.from_pretrained(expand_path(job.model.pretrained), **label_keys(labels))
    else:
        vocabulary = len(load_tokenizer(job.data.tokenizer.path)) if job.data.tokenizer.path else job.data.tokenizer.vocab_size
        config = hf_config(job.model, StandInTokenizer(vocabulary), labels)
    expected = meta_sizes(job.model.family, config, [job.parallelism])
    if job.model.lora:
        adapters = lora_parameters(saved_shapes(Path(expand_path(job.model.pretrained))), job.model.lora)
        expected = [
            replace(size, parameters=size.parameters + adapters, worker_parameters=size.worker_parameters + adapters, trainable=adapters) for size in expected
        ]
    assert [model_size(job)] == expected


def test_plan_counts_the_model_that_trains(job):
    size = model_size(job)
    model = build_model(job.model, job.task, StandInTokenizer(job.data.tokenizer.vocab_size), [], seed=0)
    assert size.parameters == sum(p.numel() for p in model.parameters())
    assert size.largest_layer == max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    assert (size.layers, size.hidden, size.heads) == (2, 64, 2)


@pytest.mark.parametrize(
    ("family", "keys", "problem"),
    [
        ("llama", {"hidden_size": 100, "num_attention_heads": 3}, "num_attention_heads: 3 heads cannot split a hidden width of 100"),
        ("bert", {"add_cross_attention": True}, "add_cross_attention: cross-attention layers belong to a decoder (is_decoder: true)"),
        ("t5", {"feed_forward_proj": 1}, "feed_forward_proj: text (got 1)"),
        ("t5", {"num_decoder_layers": 2048}, "num_decoder_layers: a whole number from 1 to 1,024, or null (got 2048)"),
        ("llama", {"vocab_size": 2**21}, "vocab_size: a whole number from 1 to 1,048,576 (got 2097152)"),
        ("gpt2", {"n_positions": True}, "n_positions: a whole number from 1 to 1,048,576 (got True)"),
    ],
)
def test_configs_no_model_has_are_named_by_their_key(family, keys, problem):
    assert config_problem(family, ARCHITECTURES[family].config(keys)) == problem


@settings(EXAMPLES, max_examples=300)
@given(weights=st.lists(st.integers(0, 3) | st.integers(0, 2**40), min_size=1, max_size=12), parts=st.integers(1, 14))
def test_the_pipeline_partition_is_deepspeeds_own(weights, parts):
    """Written out (importing DeepSpeed took seconds), the same stage bounds: ties, empty layers, fewer layers than stages."""
    assert partition_balanced(weights, parts) == deepspeeds_partition_balanced(weights, parts)


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> dict[str, str]:
    """Local tokenizers a job may name, as files and as directories, with special tokens their vocabulary lacks."""
    root = tmp_path_factory.mktemp("tokenizers")
    paths = {"MiniLM directory": str(MINILM), "MiniLM tokenizer.json": str(MINILM / "tokenizer.json")}
    texts = [f"word{i} thing{i % 7} and more {i * 3}" for i in range(300)]
    for algorithm in ("bpe", "wordpiece"):
        tokenizer = train_tokenizer(TokenizerConfig(train=algorithm, vocab_size=300), texts)
        paths[f"{algorithm} tokenizer.json"] = str(root / f"{algorithm}.json")
        tokenizer.backend_tokenizer.save(paths[f"{algorithm} tokenizer.json"])
        paths[f"{algorithm} directory"] = str(root / algorithm)
        tokenizer.save_pretrained(paths[f"{algorithm} directory"])
        tokenizer.add_special_tokens({"bos_token": "<bos>", "additional_special_tokens": ["<extra>"]})
        tokenizer.add_tokens(["plainly-added"])
        paths[f"{algorithm} directory with added tokens"] = str(root / f"{algorithm}-added")
        tokenizer.save_pretrained(paths[f"{algorithm} directory with added tokens"])
    padded = load_tokenizer(paths["bpe tokenizer.json"]).backend_tokenizer
    padded.enable_padding(pad_token="<new-pad>")
    paths["tokenizer.json padding with a token of its own"] = str(root / "padded.json")
    padded.save(paths["tokenizer.json padding with a token of its own"])
    added = {"content": "<decoded>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
    named = {  # what a tokenizer_config.json may name: *_token keys (not add_bos_token), extra tokens (a list or by name)
        "tokenizer_config.json naming tokens the vocabulary lacks": {
            "bos_token": "[BOS]",
            "image_token": "<image>",
            "add_bos_token": True,
            "added_tokens_decoder": {"30522": added},
            "extra_special_tokens": ["<extra>", "[SEP]"],
        },
        "tokenizer_config.json naming extra tokens the vocabulary lacks": {"extra_special_tokens": {"video_token": "<video>", "end_token": "[SEP]"}},
        "tokenizer_config.json of an older transformers naming them": {"additional_special_tokens": ["<extra>"]},
    }
    for case, keys in named.items():
        directory = shutil.copytree(MINILM, root / f"named-{len(paths)}")
        config = json.loads((directory / "tokenizer_config.json").read_text())
        (directory / "tokenizer_config.json").write_text(json.dumps(config | keys))
        paths[case] = str(directory)
    slow = root / "slow"
    slow.mkdir()
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(MINILM / name, slow / name)
    paths["no tokenizer.json (transformers converts vocab.txt)"] = str(slow)
    return paths


@pytest.mark.parametrize(
    "case",
    [
        "MiniLM directory",
        "MiniLM tokenizer.json",
        "bpe tokenizer.json",
        "bpe directory",
        "bpe directory with added tokens",
        "wordpiece tokenizer.json",
        "wordpiece directory",
        "wordpiece directory with added tokens",
        "tokenizer.json padding with a token of its own",
        "tokenizer_config.json naming tokens the vocabulary lacks",
        "tokenizer_config.json naming extra tokens the vocabulary lacks",
        "tokenizer_config.json of an older transformers naming them",
        "no tokenizer.json (transformers converts vocab.txt)",
    ],
)
def test_the_vocabulary_of_a_local_tokenizer_is_the_one_it_loads_with(tokenizers, case):
    assert tokenizer_size(tokenizers[case]) == len(load_tokenizer(tokenizers[case]))


@pytest.mark.parametrize("workers", [1, 2, 3, 8])
@pytest.mark.parametrize("offload", [False, True])
def test_estimates_are_deepspeeds_own(job, workers, offload):
    """plan writes DeepSpeed's estimator formulas out (importing DeepSpeed took seconds): the same numbers."""
    size = model_size(job)
    host, device = estimate_zero2_model_states_mem_needs(size.parameters, num_gpus_per_node=workers, cpu_offload=offload)
    assert deepspeed_estimate({"zero_stage": 2, "offload_optimizer": offload}, size, workers) == (device, host / workers)
    host, device = estimate_zero2_model_states_mem_needs(size.parameters, num_gpus_per_node=1, cpu_offload=offload)
    assert deepspeed_estimate({"zero_stage": 0, "offload_optimizer": offload}, size, workers) == (device, host)
    for offload_params in (False, True) if offload else (False,):
        host, device, _ = estimate_zero3_model_states_mem_needs(
            size.parameters,
            size.largest_layer,
            num_gpus_per_node=workers,
            cpu_offload=offload,
            cpu_offload_params=offload_params,
            zero_init=True,
        )
        option = {"zero_stage": 3, "offload_optimizer": offload, "offload_params": offload_params}
        assert deepspeed_estimate(option, size, workers) == (device, host / workers)


def test_option_names_say_the_stage_and_what_is_offloaded():
    assert list(OPTIONS) == [option_name(option) for option in OPTIONS.values()]
    assert option_name({"zero_stage": 3, "offload_optimizer": False, "offload_params": True}) == "ZeRO-3 + offload params"
    assert option_name({"zero_stage": 1, "offload_optimizer": True, "offload_params": False}) == "ZeRO-1 + offload optimizer"


def test_paper_bytes_divide_each_term_from_the_stage_that_partitions_it():
    assert paper_bytes(0, 1000, 4) == 16 * 1000
    assert paper_bytes(1, 1000, 4) == 4 * 1000 + 12 * 1000 / 4
    assert paper_bytes(2, 1000, 4) == 2 * 1000 + 14 * 1000 / 4
    assert paper_bytes(3, 1000, 4) == 16 * 1000 / 4


def test_the_recommendation_is_the_first_option_that_fits(job):
    size = model_size(job)
    options, choice = plan(job, size, memory_per_worker=2**40)
    assert choice == "ZeRO-0" and all(option.fits for option in options)
    needed = {option.name: option.needed_bytes for option in options}
    assert needed["ZeRO-3"] < needed["ZeRO-0"]
    _, choice = plan(job, size, memory_per_worker=(needed["ZeRO-3"] + needed["ZeRO-2"]) / 2)
    assert choice == "ZeRO-3"
    assert plan(job, size, memory_per_worker=1)[1] is None


def test_plan_command_imports_neither_torch_nor_transformers_nor_deepspeed(corpus, tmp_path):
    """In a process of its own: a pipeline-parallel job, its vocabulary a local tokenizer's. The libraries that build
    and train the model take seconds each to import; plan counts without them."""
    path = write_job(tmp_path / "cli.yaml", tiny_job(corpus, data={"tokenizer": {"path": str(MINILM / "tokenizer.json")}}))
    fits = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "orchestrator", "plan", str(path), "--memory-per-worker", "64", "--set", "parallelism.pipeline=2"],
        capture_output=True,
        text=True,
        env=os.environ | {"NO_COLOR": "1"},
    )
    assert fits.returncode == 0, fits.stderr[-2000:]
    assert all(name in fits.stdout for name in ("ZeRO-0", "ZeRO-1")) and "recommended: ZeRO-0" in fits.stdout
    assert "at most" in fits.stdout and "parameters per worker" in fits.stdout
    assert not re.findall(r"\|\s+((?:torch|transformers|deepspeed)(?:\.\S*)?)$", fits.stderr, re.MULTILINE)  # stderr: the imports, one a line


@pytest.mark.parametrize(
    ("settings", "memory", "expected"),
    [
        (["deepspeed.zero_stage=2"], "64", "your job: ZeRO-2 (fits, "),
        (["deepspeed.zero_stage=1", "deepspeed.offload_optimizer=true"], "64", "your job: ZeRO-1 + offload optimizer (fits, "),
        (["deepspeed.zero_stage=3"], "0.0001", "your job: ZeRO-3 (does not fit, "),
    ],
)
def test_plan_shows_the_jobs_own_option_beside_the_recommendation(corpus, tmp_path, settings, memory, expected):
    path = write_job(tmp_path / "own.yaml", tiny_job(corpus))
    overrides = [argument for setting in settings for argument in ("--set", setting)]
    result = CliRunner().invoke(app, ["plan", str(path), *overrides, "--memory-per-worker", memory], env={"NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    own, recommended = result.stdout.splitlines()[-2:]
    assert own.startswith(expected) and own.endswith(" per worker)")
    assert recommended.startswith("recommended: " + ("ZeRO-0" if memory == "64" else "none fits"))


def test_model_parallel_plans_count_the_busiest_worker_and_shard_over_replicas(corpus, tmp_path):
    """Pipeline: the largest stage of DeepSpeed's balanced partition (the tied embedding on both ends), ZeRO 0-1.
    Tensor: linear layers split, embeddings whole, ZeRO 0-2 over the data-parallel replicas only."""
    path = write_job(tmp_path / "job.yaml", tiny_job(corpus))
    whole = model_size(load_job(path))
    pipeline = load_job(path, ["parallelism.pipeline=2"])
    size = model_size(pipeline)
    assert size.parameters == whole.parameters and whole.parameters / 2 < size.worker_parameters < whole.parameters
    options, _ = plan(pipeline, size, memory_per_worker=2**40)
    assert [option.name for option in options] == ["ZeRO-0", "ZeRO-1"]
    assert options[0].paper_bytes == paper_bytes(0, size.worker_parameters, 1)

    tensor = load_job(path, ["model.family=llama", "parallelism.tensor=2", "scaling.num_workers=4"])
    size = model_size(tensor)
    model = build_model(tensor.model, tensor.task, StandInTokenizer(tensor.data.tokenizer.vocab_size), [], seed=0)
    embeddings = model.model.embed_tokens.weight.numel()
    norms = sum(p.numel() for name, p in model.named_parameters() if "norm" in name)
    assert size.worker_parameters == embeddings + norms + (size.parameters - embeddings - norms) // 2
    options, _ = plan(tensor, size, memory_per_worker=2**40)
    assert "ZeRO-3" not in {option.name for option in options}
    assert options[1].paper_bytes == paper_bytes(1, size.worker_parameters, 2)  # sharded over 2 replicas, not 4 workers


@pytest.mark.parametrize("checkpointing", [False, True])
def test_activation_checkpointing_keeps_each_layers_input_and_one_layer_whole(corpus, tmp_path, checkpointing):
    """Korthikanti et al.: a layer keeps s·b·h·(34 + 5·a·s/h) bytes in 16-bit without recomputation, 2·s·b·h with it;
    fp32 doubles both. Here s=8, b=2, h=8, a=2, L=3, vocabulary 10, fp32."""
    settings = tiny_job(corpus)
    settings["data"]["seq_len"], settings["deepspeed"] = 8, {"precision": "fp32"}
    settings["train"] |= {"micro_batch_size": 2, "activation_checkpointing": checkpointing}
    job = load_job(write_job(tmp_path / "job.yaml", settings))
    size = ModelSize(parameters=1000, worker_parameters=1000, largest_layer=100, layers=3, hidden=8, heads=2, vocab=10)
    layer = 8 * 2 * 8 * (34 + 5 * 2 * 8 / 8) * 2  # 11,264 bytes
    logits = 2 * 4 * 8 * 2 * 10  # fp32 logits and their gradient: 1,280 bytes
    kept = 3 * (2 * 8 * 2 * 8 * 2) + layer if checkpointing else 3 * layer
    assert activation_bytes(job, size) == kept + logits
