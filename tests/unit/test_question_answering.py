"""Extractive question answering without Ray: SQuAD's scoring, the best-overlap-sentence baseline, the span a model's
logits give, where an answer lies in the encoded question and context (and which rows have no span), the job fields
that only this task takes, and the dictionary corpus that cluster/prepare_data.py builds."""

import importlib.util
import json

import numpy as np
import pytest
import torch
from helpers import REPO, tiny_job, write_jsonl
from tokenizers import processors

from orchestrator.config.errors import UserError
from orchestrator.config.job import TokenizerConfig
from orchestrator.config.load import validate
from orchestrator.data.clean import copy_keys, dedup_text
from orchestrator.data.encode import answer_chars, check_answers, encode_question_answering
from orchestrator.data.tokenizers import from_json, train_tokenizer
from orchestrator.models.answers import answer_scores, best_overlap_sentence, best_spans, exact_match, normalize_answer, token_f1

# --- scoring (the official SQuAD v1.1 evaluation script's definitions) -----------------------------------------


@pytest.mark.parametrize(
    ("text", "normalized"),
    [("The Denver Broncos!", "denver broncos"), ("  an  Apple,  a day ", "apple day"), ("Theatre", "theatre"), ("Saint-Paul", "saintpaul")],
)
def test_normalization_lowercases_and_strips_punctuation_articles_and_spaces(text, normalized):
    assert normalize_answer(text) == normalized


def test_exact_match_and_token_f1_score_squad_answers():
    assert exact_match("the Broncos.", "Broncos") == 1.0
    assert exact_match("Denver Broncos", "Broncos") == 0.0
    assert token_f1("Denver Broncos", "The Denver Broncos") == 1.0
    assert token_f1("Broncos", "Denver Broncos") == pytest.approx(2 / 3)  # precision 1, recall 1/2
    assert token_f1("Santa Clara, California", "Levi's Stadium in Santa Clara") == pytest.approx(2 * (2 / 3 * 2 / 5) / (2 / 3 + 2 / 5))
    assert token_f1("the", "a") == 0.0  # nothing left after normalization
    assert token_f1("x b b", "b b c") == pytest.approx(2 / 3)  # bags: both copies of b count
    assert token_f1("b b", "b c") == 0.5  # one b in common: precision 1/2, recall 1/2


def test_answer_scores_are_means_in_percent():
    assert answer_scores(["Broncos", "Denver"], ["Denver Broncos", "Denver"]) == pytest.approx((50.0, 100 * (2 / 3 + 1) / 2))


def test_baseline_answers_with_the_sentence_sharing_most_words_with_the_question():
    context = "house: maison. dog: chien. big dog: grand chien! cat: chat."
    assert best_overlap_sentence("What is the French for cat?", context) == "cat: chat."
    assert best_overlap_sentence("What is the French for big dog?", context) == "big dog: grand chien!"
    assert best_overlap_sentence("Where is the house?", "No sentence end here") == "No sentence end here"
    assert best_overlap_sentence("nothing shared", context) == "house: maison."  # ties: the first


def test_best_span_starts_before_it_ends_within_the_context_and_the_longest_answer():
    start = torch.tensor([[9.0, 0.0, 1.0, 0.0, 5.0, 0.0]])
    end = torch.tensor([[9.0, 2.0, 0.0, 3.0, -9.0, -9.0]])
    context = torch.tensor([[False, True, True, True, True, True]])  # position 0: the question
    assert [int(t) for t in best_spans(start, end, context)] == [2, 3]  # not 4 -> 3 (8): it ends before it starts
    assert [int(t) for t in best_spans(start, end, context, max_tokens=1)] == [3, 3]
    assert [int(t) for t in best_spans(start, end, torch.ones_like(context))] == [0, 0]


# --- where the answer lies ---------------------------------------------------------------------------------


def test_answer_characters_are_the_occurrence_nearest_to_answer_start():
    context = "dog: chien. hound: chien. cat: chat."
    assert answer_chars(context, "chien") == (5, 10)
    assert answer_chars(context, "chien", hint=17) == (19, 24)
    assert answer_chars(context, "chien", hint=0) == (5, 10)
    assert answer_chars(context, "loup") is None
    assert answer_chars(context, "") is None


CONTEXTS = ["dog: chien. hound: chien. cat: chat.", "house: maison. tree: arbre. river: fleuve. tower: tour."]


@pytest.fixture(scope="module")
def tokenizer():
    texts = CONTEXTS + ["what is the french for"] * 3
    return train_tokenizer(TokenizerConfig(train="wordpiece", vocab_size=256), texts)


def rows(*records) -> dict:
    columns = {name: np.array([record.get(name) for record in records], dtype=object) for name in ("text", "question", "answer", "answer_start")}
    return columns | {"is_val": np.zeros(len(records), dtype=bool)}


def encoded(tokenizer, batch: dict, seq_len: int) -> dict:
    return encode_question_answering(batch, tokenizer_json=tokenizer.backend_tokenizer.to_str(), seq_len=seq_len, pad=tokenizer.pad_token_id)


def test_encoding_marks_the_answer_tokens_of_the_context(tokenizer):
    batch = rows(
        {"text": CONTEXTS[0], "question": "what is the french for hound?", "answer": "chien", "answer_start": "19"},
        {"text": CONTEXTS[1], "question": "what is the french for river?", "answer": "fleuve"},
    )
    out = encoded(tokenizer, batch, seq_len=40)
    assert set(out) == {"input_ids", "attention_mask", "token_type_ids", "start_positions", "end_positions", "is_val"}
    assert out["input_ids"].shape == out["token_type_ids"].shape == (2, 40)
    spans = zip(out["input_ids"], out["token_type_ids"], out["start_positions"], out["end_positions"])
    for (ids, types, start, end), answer in zip(spans, ("chien", "fleuve")):
        assert tokenizer.decode(ids[start : end + 1]).replace(" ", "") == answer
        assert set(types[start : end + 1]) == {1}  # in the context, not the question
    first_chien = tokenizer.decode(out["input_ids"][0][: out["start_positions"][0]])
    assert "hound" in first_chien  # the second chien, as answer_start says


@pytest.mark.parametrize("template", ["bert", "roberta"])
def test_token_types_tell_the_context_from_the_question_whatever_the_pair_template_gives(tokenizer, template):
    """BERT's template types the context 1 itself; RoBERTa's types every token 0, and the sequences tell them apart."""
    tokenizer = from_json(tokenizer.backend_tokenizer.to_str())  # a copy: the fixture is the module's
    vocab = tokenizer.get_vocab()
    cls, sep = ("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])
    processor = processors.BertProcessing(sep, cls) if template == "bert" else processors.RobertaProcessing(sep, cls)
    tokenizer.backend_tokenizer.post_processor = processor
    out = encoded(tokenizer, rows({"text": CONTEXTS[1], "question": "what is the french for river", "answer": "fleuve"}), seq_len=40)
    ids, types = out["input_ids"][0], out["token_type_ids"][0]
    question, context = (tokenizer.decode(ids[types == kind], skip_special_tokens=True).replace(" ", "") for kind in (0, 1))
    assert (question, context) == ("whatisthefrenchforriver", CONTEXTS[1].replace(" ", ""))


def test_rows_without_an_answer_span_are_dropped_with_their_reason_not_mislabeled(tokenizer):
    batch = rows(
        {"text": CONTEXTS[1], "question": "what is the french for house?", "answer": "maison"},
        {"text": CONTEXTS[1], "question": "what is the french for tower?", "answer": "tour"},  # past seq_len
        {"text": CONTEXTS[1], "question": "what is the french for dog?", "answer": "chien"},  # not in the context
        {"text": CONTEXTS[1], "question": "what is the french for tree?", "answer": "arbre", "answer_start": "near"},
        {"text": CONTEXTS[1], "question": "what is the french for river?", "answer": "loup"},  # dropped earlier: left as it is
    )
    out = encoded(tokenizer, batch, seq_len=16)
    assert len(out["start_positions"]) == 1  # what check_answers drops, the encoder leaves out too
    assert tokenizer.decode(out["input_ids"][0][out["start_positions"][0] : out["end_positions"][0] + 1]) == "maison"

    stages = {"stage": np.array(["", "", "", "", "read"], dtype=object), "reason": np.full(5, "", dtype=object)}
    checked = check_answers(batch | stages, tokenizer.backend_tokenizer.to_str(), 16, tokenizer.pad_token_id)
    assert checked["stage"].tolist() == ["", "answer_span", "answer_span", "answer_span", "read"]
    assert checked["reason"][1].startswith("answer cut off by seq_len (it ends at character")
    assert checked["reason"][2:].tolist() == ["answer not in the context", "answer_start is not an integer ('near')", ""]


def test_deduplication_tells_questions_on_one_context_apart():
    keys = copy_keys(["ctx", "ctx", "ctx"], [("who?", "a"), ("what?", "b"), ("who?", "a")])
    assert (keys[0] != keys[1]).any() and (keys[0] == keys[2]).all()
    assert (copy_keys(["c"], [("q\nr", "a")]) != copy_keys(["c"], [("q", "r\na")])).any()
    assert dedup_text("ctx", ("who?", "a")) == "ctx\nwho?\na"


# --- the job --------------------------------------------------------------------------------------------


def qa_job(corpus, **data) -> dict:
    return tiny_job(corpus, task="question_answering", model={"family": "bert", "size": "tiny"}, data={"text_field": "context"} | data)


def test_question_and_answer_fields_belong_to_question_answering(corpus):
    job = validate(qa_job(corpus, question_field="q", answer_field="a", answer_start_field="at"))
    assert (job.data.question_field, job.data.answer_field, job.data.answer_start_field) == ("q", "a", "at")
    with pytest.raises(UserError, match="data.answer_field: the question_answering task needs it"):
        validate(qa_job(corpus, question_field="q"))
    with pytest.raises(UserError, match="data.answer_start_field: not used by the causal_lm task"):
        validate(tiny_job(corpus, data={"answer_start_field": "at"}))


def test_the_pipeline_keeps_every_question_on_a_context_and_quarantines_answers_without_a_span(local_ray, tmp_path):
    """The Ray Data pipeline (`prepare`): exact dedup drops a repeated question, not another question on its context;
    the answer_span stage drops, with its reason, an answer absent from its context and one past seq_len."""
    from orchestrator.data.pipeline import QUARANTINE_FILE, prepare

    contexts = [f"{word}: mot{i}. other{i}: autre{i}." for i, word in enumerate(["dog", "cat", "house", "tree"] * 5)]
    records = [{"context": c, "question": f"french for {c.split(':')[0]}?", "answer": c.split(" ")[1].rstrip(".")} for c in contexts]
    records += [{"context": contexts[0], "question": "french for other0?", "answer": "autre0"}, records[0]]  # another question; a repeat
    records += [{"context": contexts[1], "question": "french for wolf?", "answer": "loup"}]  # no span
    records += [{"context": " ".join(["filler word"] * 40) + " end: fin.", "question": "french for end?", "answer": "fin"}]  # cut off
    corpus = write_jsonl(tmp_path / "questions.jsonl", records)
    data = {"question_field": "question", "answer_field": "answer", "seq_len": 32, "val_fraction": 0, "clean": {"dedup_exact": True}}
    data |= {"tokenizer": {"train": "wordpiece", "vocab_size": 256}, "cache": False}
    job = validate(qa_job(corpus, **data))
    prepared = prepare(job)

    assert (prepared.report.rows_read, prepared.train_sequences) == (24, 21)
    assert prepared.report.dropped == {"dedup_exact": {"duplicate": 1}, "answer_span": {"answer not in the context": 1, "answer cut off by seq_len": 1}}
    quarantined = [json.loads(line) for line in (prepared.directory / QUARANTINE_FILE).read_text().splitlines()]
    assert sorted(line["row"]["question"] for line in quarantined) == ["french for dog?", "french for end?", "french for wolf?"]
    assert set(prepared.train.take(np.arange(1))) == {"input_ids", "attention_mask", "token_type_ids", "start_positions", "end_positions"}


# --- the example corpus ------------------------------------------------------------------------------------


def test_dictionary_questions_are_deterministic_spans_of_their_context():
    spec = importlib.util.spec_from_file_location("prepare_data", REPO / "cluster/prepare_data.py")
    prepare_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare_data)
    pairs = [{"en": f"word{i}", "fr": f"mot{i % 7}"} for i in range(40)] + [{"en": "etc", "fr": "etc."}, {"en": "word1", "fr": "autre"}]
    records = prepare_data.dictionary_questions(pairs, seed=3)
    assert records == prepare_data.dictionary_questions(pairs, seed=3) != prepare_data.dictionary_questions(pairs, seed=4)
    assert len(records) == 40 // prepare_data.ENTRIES_PER_CONTEXT * prepare_data.QUESTIONS_PER_CONTEXT
    for record in records:
        start = record["answer_start"]
        assert record["context"][start : start + len(record["answer"])] == record["answer"]
        english = record["context"][:start].rsplit(". ", 1)[-1].removesuffix(": ")  # the entry's headword
        assert english in record["question"]
    assert not any("etc" in record["context"] or "autre" in record["context"] for record in records)  # "." / a second pair
