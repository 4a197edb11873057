"""Instruction tuning (task sft): records rendered by a chat template, labels on the responses only, whole examples
packed into rows whose attention stays inside each example, and the job errors of records it cannot use."""

import json

import numpy as np
import pytest
import torch
import transformers
from pydantic import ValidationError

from orchestrator.config.job import JobConfig, TokenizerConfig
from orchestrator.data.encode import (
    DEFAULT_CHAT_TEMPLATE,
    IGNORED_LABEL,
    UnusableRecord,
    chat_of,
    chat_segments,
    encode_sft,
    rows_of_examples,
    sft_example,
    sft_problem,
)
from orchestrator.data.tokenizers import from_json, template_tokens, train_tokenizer
from orchestrator.models.tasks import TASKS

# ChatML, as Qwen's and many other tokenizers have it: the responses end with their own end token
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
PAIRS = [("the cat", "le chat"), ("a dog sees the bird", "un chien voit l'oiseau"), ("the bird", "l'oiseau"), ("a cat", "un chat")]


@pytest.fixture(scope="module")
def tokenizer():
    texts = [text for pair in PAIRS for text in pair] * 20
    return train_tokenizer(TokenizerConfig(train="bpe", vocab_size=300), texts)


def example(tokenizer, prompt: str, response: str, seq_len: int = 64, train_on_inputs: bool = False, template: str = DEFAULT_CHAT_TEMPLATE):
    segments = chat_segments(chat_of(prompt, response, None), template, template_tokens(tokenizer))
    return sft_example(segments, tokenizer.backend_tokenizer, seq_len, train_on_inputs)


def test_the_default_format_is_prompt_newline_response_end_of_text_with_labels_on_the_response_and_its_end(tokenizer):
    ids, labels = example(tokenizer, "the cat", "le chat")
    prompt = tokenizer("the cat\n", add_special_tokens=False)["input_ids"]
    response = tokenizer("le chat", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert ids == prompt + response
    assert labels == [IGNORED_LABEL] * len(prompt) + response

    _, all_labels = example(tokenizer, "the cat", "le chat", train_on_inputs=True)
    assert all_labels == [IGNORED_LABEL] + ids[1:]  # the first token has nothing before it to be predicted from


def test_truncation_cuts_the_response_and_a_prompt_that_fills_seq_len_leaves_no_label(tokenizer):
    full, _ = example(tokenizer, "a dog sees the bird", "un chien voit l'oiseau")
    prompt = len(tokenizer("a dog sees the bird\n", add_special_tokens=False)["input_ids"])
    ids, labels = example(tokenizer, "a dog sees the bird", "un chien voit l'oiseau", seq_len=prompt + 2)
    assert ids == full[: prompt + 2] and labels[prompt:] == ids[prompt:] and labels[:prompt] == [IGNORED_LABEL] * prompt
    _, labels = example(tokenizer, "a dog sees the bird", "un chien voit l'oiseau", seq_len=prompt)
    assert set(labels) == {IGNORED_LABEL}


def test_a_chat_template_marks_every_assistant_turn_and_its_end_token(tokenizer):
    messages = [
        {"role": "system", "content": "translate"},
        {"role": "user", "content": "the cat"},
        {"role": "assistant", "content": "le chat"},
        {"role": "user", "content": "a dog"},
        {"role": "assistant", "content": "un chien"},
    ]
    segments = chat_segments(chat_of(json.dumps(messages), None, "messages"), CHATML, {})
    assert [text for text, response in segments if response] == ["le chat<|im_end|>\n", "un chien<|im_end|>\n"]
    assert "".join(text for text, _ in segments) == "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    assert segments[2] == ("<|im_start|>user\na dog<|im_end|>\n<|im_start|>assistant\n", False)


@pytest.mark.parametrize(
    "template, messages, field",
    [
        ("{{ raise_exception('roles must alternate') }}", [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], "data.chat_template"),
        ("{{ messages[0]['content'] + 1 }}", [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], "data.chat_template"),
        (CHATML, {"role": "user"}, "data.messages_field"),
    ],
)
def test_a_record_that_cannot_be_rendered_names_the_setting_to_fix(template, messages, field):
    with pytest.raises(UnusableRecord, match=f"^{field}: "):
        chat_segments(chat_of(json.dumps(messages), None, "messages"), template, {})


def test_packing_places_whole_examples_in_order_with_positions_restarting_and_padding_unlabelled():
    examples = [([1, 2, 3], [IGNORED_LABEL, 2, 3]), ([4, 5], [IGNORED_LABEL, 5]), ([6, 7, 8, 9], [IGNORED_LABEL, IGNORED_LABEL, 8, 9])]
    rows = rows_of_examples(examples, seq_len=6, pad=0, packing=True)
    assert rows["input_ids"].tolist() == [[1, 2, 3, 4, 5, 0], [6, 7, 8, 9, 0, 0]]
    assert rows["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]]
    assert rows["labels"].tolist() == [[-100, 2, 3, -100, 5, -100], [-100, -100, 8, 9, -100, -100]]
    unpacked = rows_of_examples(examples, seq_len=6, pad=0, packing=False)
    assert unpacked["input_ids"].tolist() == [[1, 2, 3, 0, 0, 0], [4, 5, 0, 0, 0, 0], [6, 7, 8, 9, 0, 0]]


def encode(tokenizer, records: list[tuple], is_val: list[bool], template=DEFAULT_CHAT_TEMPLATE, **settings) -> dict:
    batch = {
        "text": np.array([prompt for prompt, _ in records], dtype=object),
        "target": np.array([response for _, response in records], dtype=object),
        "row_id": np.arange(len(records)),
        "is_val": np.array(is_val),
    }
    encoding = {"seq_len": 32, "pad": tokenizer.pad_token_id, "separator": tokenizer.eos_token_id, "messages_field": None}
    encoding |= {"chat_template": template, "special_tokens": template_tokens(tokenizer), "train_on_inputs": True, "packing": True}
    return encode_sft(batch, tokenizer.backend_tokenizer.to_str(), **(encoding | settings))


def test_training_rows_are_packed_and_validation_rows_hold_one_example_labelled_on_its_response(tokenizer):
    encoded = encode(tokenizer, PAIRS, [False, False, True, True])
    train, val = (encoded["is_val"] == validation for validation in (False, True))
    assert train.sum() == 1 and val.sum() == 2  # both training examples fit one row of 32 tokens
    for ids, labels, (prompt, response) in zip(encoded["input_ids"][val], encoded["labels"][val], PAIRS[2:]):
        expected, expected_labels = example(tokenizer, prompt, response)
        assert ids[: len(expected)].tolist() == expected and labels[: len(expected)].tolist() == expected_labels  # not trained on inputs
    assert encoded["report"] == {"examples": 4, "unusable": 0, "no_response": 0, "problem": None}


def test_the_encoding_report_counts_unrenderable_records_and_examples_without_a_response(tokenizer):
    template = "{% if messages[0]['content'] == 'a cat' %}{{ raise_exception('no cats') }}{% endif %}" + DEFAULT_CHAT_TEMPLATE
    longest_prompt = len(tokenizer("a dog sees the bird\n", add_special_tokens=False)["input_ids"])
    report = encode(tokenizer, PAIRS, [False] * 4, template=template, seq_len=longest_prompt, train_on_inputs=False)["report"]
    assert (report["unusable"], report["problem"]["row_id"]) == (1, 3) and "no cats" in report["problem"]["reason"]
    assert report["no_response"] == 1  # the longest prompt fills seq_len
    message, row_id = sft_problem([report, {"examples": 2, "unusable": 0, "no_response": 0, "problem": None}], "data.target_field")
    assert message.startswith("data.chat_template: cannot render a record") and message.endswith("1 record(s) like it") and row_id == 3

    assert sft_problem([{"examples": 3, "unusable": 0, "no_response": 3, "problem": None}] * 2, "data.target_field")[0].startswith(
        "data.target_field: every response is empty after truncation"
    )
    assert sft_problem([{"examples": 3, "unusable": 0, "no_response": 2, "problem": None}], "data.target_field") is None


def tiny_model(family: str) -> transformers.PreTrainedModel:
    torch.manual_seed(0)
    dims = {"vocab_size": 300, "pad_token_id": 1, "eos_token_id": 0, "bos_token_id": 0}
    if family == "gpt2":
        config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=64, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0, **dims)
    else:
        config = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64, **dims)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def token_losses(model, rows: dict) -> tuple[float, int]:
    """The sum and count of the labelled tokens' losses, fed as a training batch is (SFT.model_inputs)."""
    batch = {name: torch.from_numpy(values.astype(np.int64)) for name, values in rows.items()}
    inputs = TASKS["sft"].model_inputs(batch)
    with torch.no_grad():
        logits = model(**{name: value for name, value in inputs.items() if name != "labels"}).logits
    labels = inputs["labels"][:, 1:]
    losses = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels, ignore_index=IGNORED_LABEL, reduction="none")
    return losses.sum().item(), int((labels != IGNORED_LABEL).sum())


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_packed_examples_give_the_losses_they_give_one_per_row(family, attention, tokenizer):
    """Packed into shared rows, each example attends only to itself (the block-diagonal mask transformers builds from
    the restarting position ids): the summed token losses equal those of the same examples one per row (measured:
    under 1e-6 per token; with the cache on, transformers masks causally across the row and they differ by 1e-3 to
    1e-2)."""
    model = tiny_model(family)
    model.set_attn_implementation(attention)
    examples = [example(tokenizer, prompt, response, train_on_inputs=True) for prompt, response in PAIRS * 3]
    packed, unpacked = (rows_of_examples(examples, 48, tokenizer.pad_token_id, packing) for packing in (True, False))
    assert len(packed["input_ids"]) < len(unpacked["input_ids"])
    (packed_sum, packed_count), (unpacked_sum, unpacked_count) = token_losses(model, packed), token_losses(model, unpacked)
    assert packed_count == unpacked_count
    assert abs(packed_sum - unpacked_sum) / packed_count < 1e-5, (packed_sum - unpacked_sum) / packed_count


def test_the_validation_prompts_generate_as_they_do_one_at_a_time(tokenizer):
    """Evaluation left-pads a batch of prompts of different lengths: each still generates what it does alone."""
    model = tiny_model("gpt2")
    examples = [example(tokenizer, prompt, response) for prompt, response in PAIRS]
    rows = rows_of_examples(examples, 32, tokenizer.pad_token_id, packing=False)
    batch = {name: torch.from_numpy(values.astype(np.int64)) for name, values in rows.items()}
    predictions = TASKS["sft"].predictions(model, batch, None, tokenizer, zero3=False)
    new_tokens = int((batch["labels"] != IGNORED_LABEL).sum(1).max())  # the longest reference
    assert predictions["reference"] == [response for _, response in PAIRS]
    for (prompt, _), generated in zip(PAIRS, predictions["hypothesis"]):
        alone = torch.tensor([tokenizer(prompt + "\n", add_special_tokens=False)["input_ids"]])
        expected = model.generate(alone, attention_mask=torch.ones_like(alone), max_new_tokens=new_tokens, do_sample=False, pad_token_id=1, eos_token_id=0)
        assert generated == tokenizer.decode(expected[0, alone.shape[1] :], skip_special_tokens=True)


def job(**data) -> dict:
    return {"task": "sft", "data": {"paths": ["x.jsonl"], **data}, "train": {"max_steps": 1}}


def test_config_sft_reads_a_prompt_and_response_or_a_chat():
    assert JobConfig(**job(target_field="response")).data.packing
    assert JobConfig(**job(messages_field="messages", chat_template=CHATML)).data.chat_template == CHATML
    for data, error in [
        ({}, "data.target_field: the sft task needs exactly one of target_field or messages_field"),
        ({"target_field": "r", "messages_field": "m"}, "data.messages_field: the sft task needs exactly one"),
        ({"target_field": "r", "chat_template": "{% for m in messages %}"}, "data.chat_template\n  not a Jinja template: Unexpected end of template"),
    ]:
        with pytest.raises(ValidationError, match=error):
            JobConfig(**job(**data))
    with pytest.raises(ValidationError, match="model.family: sft trains gpt2, llama models"):
        JobConfig(**job(target_field="r") | {"model": {"family": "bert"}})
    for setting in ({"packing": False}, {"train_on_inputs": True}, {"messages_field": "m"}):
        with pytest.raises(ValidationError, match=f"data.{next(iter(setting))}: not used by the causal_lm task"):
            JobConfig(**job(**setting) | {"task": "causal_lm"})


def test_prepare_renders_chats_read_from_json_lists_and_refuses_records_it_cannot_use(local_ray, tmp_path):
    """Through the Ray Data pipeline: chats read as JSON lists travel as their JSON text, are rendered by the job's
    template (kept for export, a cache hit too); a record the template cannot render, and no response left after
    truncation, are one-line job errors naming the setting (and the first such record's file and line)."""
    from helpers import tiny_job, write_jsonl

    from orchestrator.config.errors import UserError
    from orchestrator.config.load import validate
    from orchestrator.data.pipeline import prepare

    chats = [[{"role": "user", "content": f"{prompt} {i}"}, {"role": "assistant", "content": response}] for i in range(40) for prompt, response in PAIRS]
    corpus = write_jsonl(tmp_path / "chats.jsonl", ({"messages": chat} for chat in chats))
    data = {"messages_field": "messages", "chat_template": CHATML, "cache_dir": str(tmp_path / "cache"), "val_fraction": 0.1, "seq_len": 64}
    job = validate(tiny_job(corpus, task="sft", data=data))
    prepared, again = prepare(job), prepare(job)
    assert again.report.cache == "hit" and prepared.chat_template == again.chat_template == CHATML
    row = prepared.val.take(np.arange(1))
    start = int(np.argmax(row["labels"][0] != IGNORED_LABEL))
    prompt = from_json(prepared.tokenizer_json).decode(row["input_ids"][0][:start])
    assert prompt.startswith("<|im_start|>user\n") and prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")

    refusing = CHATML.replace("{% for", "{% if messages[0]['content'] == 'a cat 7' %}{{ raise_exception('no cats') }}{% endif %}{% for", 1)
    with pytest.raises(
        UserError, match=rf"^data.chat_template: cannot render a record \(TemplateError: no cats\); 1 record\(s\) like it \(first: {corpus}:32\)$"
    ):
        prepare(validate(tiny_job(corpus, task="sft", data=data | {"chat_template": refusing})))
    with pytest.raises(UserError, match="^data.messages_field: every response is empty after truncation"):
        prepare(validate(tiny_job(corpus, task="sft", data=data | {"seq_len": 8})))


def test_the_fortunes_exchanges_become_one_line_questions_and_answers_without_attribution():
    """cluster/prepare_data.py's corpus of jobs/fortunes-qa.yaml."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("prepare_data", Path(__file__).parents[2] / "cluster" / "prepare_data.py")
    prepare_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare_data)
    fortune = (
        "Q:  What's the difference between a car salesman and a computer\n    salesman?\n\nA:  The car salesman can probably drive!\n\n\t\t-- Joan McGalliard"
    )
    assert prepare_data.exchanges(fortune) == [
        {"question": "What's the difference between a car salesman and a computer salesman?", "answer": "The car salesman can probably drive!"}
    ]
    transcript = "Q: And where was his head?\nA: Just above his shoulders.\nQ: Then?\nA: Nothing."
    assert [pair["answer"] for pair in prepare_data.exchanges(transcript)] == ["Just above his shoulders.", "Nothing."]
    assert prepare_data.exchanges("Why? Because.") == []
