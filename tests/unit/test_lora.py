"""LoRA (model.lora, peft): only the adapters (and a new task head) train, the merged export computes what the adapted
model does, plan counts the adapters exactly, and a job naming modules the model does not have is refused."""

from pathlib import Path

import pytest
import torch
import transformers
from helpers import run_cli, save_pretrained_model, tiny_job, write_job

from orchestrator.config import UserError
from orchestrator.config.job import LoraConfig, ModelConfig, TokenizerConfig
from orchestrator.config.load import validate
from orchestrator.data.tokenizers import train_tokenizer
from orchestrator.models.build import build_model
from orchestrator.models.inventory import lora_parameters
from orchestrator.models.lora import merged_state_dict
from orchestrator.models.saved import saved_shapes
from orchestrator.models.tasks import TASKS
from orchestrator.train.plan import model_size, paper_bytes

LABELS = ["no", "yes"]
# (architecture, task, what its adapters target): GPT-2's Conv1D stores its weights transposed; BERT's classifier is new
CASES = {
    "gpt2": ("causal_lm", ["c_attn", "c_proj"]),
    "qwen2": ("causal_lm", "all-linear"),
    "bert": ("sequence_classification", ["query", "value"]),
}
SMALL = {
    "gpt2": {"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 32},
    "qwen2": {},
    "bert": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 32},
}


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TokenizerConfig(vocab_size=300), [f"the cat {i} sees the dog" for i in range(50)])


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tokenizer) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("pretrained")
    return {
        name: save_pretrained_model(directory / name, name, tokenizer, TASKS[task].auto_class, **SMALL[name], **({"num_labels": 2} if name == "bert" else {}))
        for name, (task, _) in CASES.items()
    }


def adapted(saved: dict[str, Path], name: str, tokenizer, **lora):
    task, targets = CASES[name]
    config = ModelConfig(pretrained=str(saved[name]), lora=LoraConfig(r=4, target_modules=targets, **lora))
    return build_model(config, task, tokenizer, LABELS, seed=0)


@pytest.mark.parametrize("name", CASES)
def test_only_the_adapters_and_a_new_head_train(saved, tokenizer, name):
    model = adapted(saved, name, tokenizer)
    trainable = {parameter_name for parameter_name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable and all(".lora_" in key or ".modules_to_save." in key for key in trainable), trainable
    assert any(".lora_" in key for key in trainable)
    assert (".modules_to_save." in " ".join(trainable)) == (name == "bert")


@pytest.mark.parametrize("name", CASES)
def test_the_merged_weights_compute_what_the_adapted_model_does(saved, tokenizer, name):
    model = adapted(saved, name, tokenizer).eval()
    with torch.no_grad():  # peft starts each update at zero (B = 0): give it one, or merging could not be wrong
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.normal_(std=0.2)
    merged = merged_state_dict(model, model.state_dict())
    task, _ = CASES[name]
    plain = getattr(transformers, TASKS[task].auto_class).from_pretrained(saved[name]).eval()
    assert merged.keys() == plain.state_dict().keys()
    plain.load_state_dict(merged)
    inputs = torch.tensor([tokenizer.encode("the cat 7 sees the dog")])
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=inputs).logits, model(input_ids=inputs).logits)


@pytest.mark.parametrize("name", CASES)
def test_plan_counts_the_adapters_peft_makes(saved, tokenizer, name):
    model = adapted(saved, name, tokenizer)
    made = sum(parameter.numel() for key, parameter in model.named_parameters() if ".lora_" in key)
    assert lora_parameters(saved_shapes(saved[name]), LoraConfig(r=4, target_modules=CASES[name][1])) == made


def lora_job(directory: Path, **lora):
    job = tiny_job(Path("unused.jsonl"))
    job["model"], job["data"]["tokenizer"] = {"pretrained": str(directory), "lora": lora}, {}
    return validate(job)


def test_target_modules_the_model_does_not_have_are_refused_naming_its_own(saved):
    assert lora_job(saved["gpt2"], target_modules=["c_attn"]).model.lora.target_modules == ["c_attn"]
    with pytest.raises(UserError, match="model.lora.target_modules: the model has no module 'q_proj' .its modules end in .*c_attn"):
        lora_job(saved["gpt2"], target_modules=["c_attn", "q_proj"])


def test_lora_needs_a_pretrained_model_and_data_parallelism(saved):
    job = tiny_job(Path("unused.jsonl"))
    job["model"]["lora"] = {}
    with pytest.raises(UserError, match="model.lora: adapts a pretrained model; set model.pretrained"):
        validate(job)
    job = tiny_job(Path("unused.jsonl"), parallelism={"pipeline": 2}, deepspeed={"zero_stage": 1})
    job["model"], job["data"]["tokenizer"] = {"pretrained": str(saved["gpt2"]), "lora": {}}, {}
    with pytest.raises(UserError, match="model.lora: adapters train data-parallel"):
        validate(job)


def test_plan_counts_the_frozen_weights_and_only_the_adapters_states(saved):
    job = tiny_job(Path("unused.jsonl"))
    job["model"], job["data"]["tokenizer"] = {"pretrained": str(saved["gpt2"])}, {}
    full, lora = model_size(validate(job)), model_size(lora_job(saved["gpt2"], r=4))
    assert full.trainable is None and lora.parameters == full.parameters + lora.trainable
    assert paper_bytes(0, 1000, 1, trainable=10, frozen_bytes=4) == 4 * 990 + 16 * 10  # fp32 weights, Adam's 16 bytes
    assert paper_bytes(2, 1000, 2, trainable=10) == 2 * 1000 + 14 * 10 / 2


def test_plan_says_how_many_parameters_train(saved, corpus, tmp_path):
    job = tiny_job(corpus)
    job["model"], job["data"]["tokenizer"] = {"pretrained": str(saved["gpt2"]), "lora": {"r": 4, "target_modules": ["c_attn"]}}, {}
    outcome = run_cli("plan", str(write_job(tmp_path / "job.yaml", job)), "--memory-per-worker", "64")
    adapters = lora_parameters(saved_shapes(saved["gpt2"]), LoraConfig(r=4, target_modules=["c_attn"]))  # as peft makes them (above)
    assert outcome.code == 0 and f", {adapters:,} of them LoRA's, which train (" in outcome.stdout, outcome.stdout
