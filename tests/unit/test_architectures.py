"""Any local Hugging Face model: a pretrained directory of an architecture no family presets (Qwen2, Mistral, Phi-3)
validates with its family inferred and its own tokenizer, plan counts it from its saved weights, and an architecture
the task's auto class cannot build is refused when the job is validated."""

from pathlib import Path

import pytest
import transformers
from helpers import OTHER_ARCHITECTURES, save_pretrained_model, tiny_job

from orchestrator.config import UserError
from orchestrator.config.job import TokenizerConfig
from orchestrator.config.load import validate
from orchestrator.data.tokenizers import train_tokenizer
from orchestrator.models.auto_classes import buildable_model_types
from orchestrator.models.tasks import TASKS
from orchestrator.train.plan import model_size


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """A saved tiny model (and tokenizer) of each architecture."""
    tokenizer = train_tokenizer(TokenizerConfig(vocab_size=300), [f"the cat {i} sees the dog" for i in range(50)])
    directory = tmp_path_factory.mktemp("models")
    return {name: save_pretrained_model(directory / name, name, tokenizer) for name in OTHER_ARCHITECTURES}


def pretrained_job(directory: Path, **sections):
    job = tiny_job(Path("unused.jsonl"), **sections)
    job["model"], job["data"]["tokenizer"] = {"pretrained": str(directory)}, {}
    return validate(job)


@pytest.mark.parametrize("model_type", OTHER_ARCHITECTURES)
def test_a_pretrained_models_family_is_its_model_type_and_its_tokenizer_its_own(saved, model_type):
    job = pretrained_job(saved[model_type])
    assert job.model.family == model_type
    assert job.data.tokenizer.path == str(saved[model_type])
    assert job.model.dim("max_positions") == 64  # seq_len is checked against it as for the preset families


@pytest.mark.parametrize("model_type", OTHER_ARCHITECTURES)
def test_plan_counts_any_architecture_from_its_saved_weights(saved, model_type):
    built = transformers.AutoModelForCausalLM.from_pretrained(saved[model_type])
    size = model_size(pretrained_job(saved[model_type]))
    assert size.parameters == size.worker_parameters == sum(parameter.numel() for parameter in built.parameters())
    assert size.largest_layer == max(sum(p.numel() for p in module.parameters(recurse=False)) for module in built.modules())
    assert (size.layers, size.hidden, size.heads, size.vocab) == (2, 64, 4, built.config.vocab_size)


def test_an_architecture_the_tasks_auto_class_cannot_build_is_refused(saved):
    with pytest.raises(UserError, match="model.pretrained: AutoModelForSeq2SeqLM cannot build a qwen2 model .config.json model_type., which seq2seq needs"):
        pretrained_job(saved["qwen2"], task="seq2seq", data={"target_field": "target"})


def test_a_family_that_is_not_the_models_is_refused(saved):
    job = tiny_job(Path("unused.jsonl"))
    job["model"] = {"family": "llama", "pretrained": str(saved["mistral"])}
    with pytest.raises(UserError, match=f"model.family: {saved['mistral']} is a mistral model .got 'llama'."):
        validate(job)


def test_model_parallelism_splits_only_the_families_it_knows(saved):
    with pytest.raises(UserError, match="parallelism.tensor: splits llama models, not qwen2"):
        pretrained_job(saved["qwen2"], parallelism={"tensor": 2}, deepspeed={"zero_stage": 1})


def test_the_auto_class_tables_read_without_transformers_are_its_own():
    for task in TASKS.values():
        mapping = getattr(transformers, task.auto_class)._model_mapping
        assert buildable_model_types(task.auto_class) == set(mapping._model_mapping), task.auto_class
        assert set(task.families) <= buildable_model_types(task.auto_class), task.auto_class
