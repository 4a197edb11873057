"""Model building: random-init presets of every task and local pretrained models, with the job's dropout."""

import functools

import pytest
import torch
import transformers

from orchestrator.config.job import ModelConfig, TokenizerConfig
from orchestrator.data.tokenizers import train_tokenizer
from orchestrator.models.build import build_model
from orchestrator.models.pipeline import Gpt2Block

TINY = {"layers": 1, "hidden": 32, "heads": 2, "ffn": 64, "max_positions": 32}


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TokenizerConfig(train="bpe", vocab_size=300), [f"the cat {i} sees the dog" for i in range(50)])


def test_pretrained_model_loads_its_weights_with_the_jobs_dropout(tmp_path, tokenizer):
    saved = build_model(ModelConfig(dims=TINY), "causal_lm", tokenizer, [], seed=1)
    saved.save_pretrained(tmp_path)

    loaded = build_model(ModelConfig(pretrained=str(tmp_path), dropout=0.25), "causal_lm", tokenizer, [], seed=2)
    assert isinstance(loaded, transformers.GPT2LMHeadModel)
    assert (loaded.config.attn_pdrop, loaded.config.resid_pdrop, loaded.config.embd_pdrop) == (0.25, 0.25, 0.25)
    for (name, mine), theirs in zip(loaded.state_dict().items(), saved.state_dict().values()):
        assert torch.equal(mine, theirs), name

    untouched = build_model(ModelConfig(pretrained=str(tmp_path)), "causal_lm", tokenizer, [], seed=2)
    assert untouched.config.attn_pdrop == saved.config.attn_pdrop


def test_random_init_models_use_the_trained_tokenizers_ids(tokenizer):
    labels = ["no", "yes"]
    classifier = build_model(ModelConfig(family="bert", dims=TINY), "sequence_classification", tokenizer, labels, seed=0)
    assert isinstance(classifier, transformers.BertForSequenceClassification)
    assert classifier.config.id2label == {0: "no", 1: "yes"} and classifier.config.vocab_size == len(tokenizer)

    translator = build_model(ModelConfig(family="t5", size="tiny"), "seq2seq", tokenizer, [], seed=0)
    assert isinstance(translator, transformers.T5ForConditionalGeneration)
    assert translator.config.decoder_start_token_id == translator.config.pad_token_id == tokenizer.pad_token_id
    assert translator.config.eos_token_id == tokenizer.eos_token_id


def saved_bytes(forward) -> tuple[int, torch.Tensor]:
    """Bytes `forward()` keeps for the backward pass, and what it returns."""
    saved = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = forward()
    return sum(saved), output


def saved_bytes_and_gradients(model: torch.nn.Module, inputs: dict) -> tuple[int, torch.Tensor]:
    """Bytes the forward pass keeps for the backward pass, and the gradients; dropout on, seeded."""
    model.train()
    torch.manual_seed(0)
    kept, output = saved_bytes(lambda: model(**inputs))
    output.loss.backward()
    return kept, torch.cat([parameter.grad.flatten() for parameter in model.parameters() if parameter.grad is not None])


@pytest.mark.parametrize(
    "family, task, labels",
    [("gpt2", "causal_lm", []), ("llama", "causal_lm", []), ("bert", "sequence_classification", ["no", "yes"]), ("t5", "seq2seq", [])],
)
def test_activation_checkpointing_keeps_less_for_the_backward_pass_and_computes_the_same_gradients(tokenizer, family, task, labels):
    dims = {key: value for key, value in TINY.items() if key != "max_positions" or family != "t5"} | {"layers": 2}
    input_ids = torch.randint(5, len(tokenizer), (2, 16), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": input_ids, "labels": torch.tensor([0, 1]) if labels else input_ids}
    kept, gradients = {}, {}
    for checkpointing in (False, True):
        model = build_model(ModelConfig(family=family, dims=dims), task, tokenizer, labels, seed=0, activation_checkpointing=checkpointing)
        kept[checkpointing], gradients[checkpointing] = saved_bytes_and_gradients(model, inputs)
    assert kept[True] < kept[False] / 2
    assert torch.equal(gradients[True], gradients[False])


def test_a_pipeline_stages_block_checkpoints_itself(tokenizer):
    """models/pipeline.py calls the transformer blocks one by one: the blocks checkpoint themselves there too."""
    kept = {}
    for checkpointing in (False, True):
        model = build_model(ModelConfig(dims=TINY), "causal_lm", tokenizer, [], seed=0, activation_checkpointing=checkpointing)
        block, hidden = Gpt2Block(model.train(), 0), torch.randn(2, 16, TINY["hidden"], requires_grad=True)
        kept[checkpointing], output = saved_bytes(functools.partial(block, hidden))
        output.sum().backward()
    assert kept[True] < kept[False] / 4
