"""Clean rows -> the token tensors a task trains on. Pure functions over numpy batches, run by Ray Data's map_batches.

- measure: token count of each text (for the report and the token-length stage) and its split (train or val);
- check_answers (question answering): drops (stage answer_span) the rows whose answer is not in the context, or is
  cut off when question and context are truncated to seq_len;
- encode: one registry entry per task, run on one part of the corpus at a time (encode_part). Causal LM packs
  documents back to back into full rows of seq_len tokens; classification, seq2seq and question answering truncate
  and pad each example to seq_len, with an attention mask. Instruction tuning renders each record with a chat template
  and labels only its responses, packing whole examples into rows (encode_sft).
The tokenizer travels as its JSON string and is built once per worker process.
"""

import functools
import json
import zlib
from collections.abc import Callable

import numpy as np
from tokenizers import Encoding, Tokenizer

IGNORED_LABEL = -100  # target positions the loss skips (padding)
PART_BITS = 13  # a part: 8,192 consecutive lines of a file (fewer where cleaning dropped some)


@functools.lru_cache(maxsize=4)
def tokenizer_of(tokenizer_json: str, seq_len: int | None = None, pad_id: int | None = None) -> Tokenizer:
    """The tokenizer, truncating and padding to seq_len when given."""
    tokenizer = Tokenizer.from_str(tokenizer_json)
    if seq_len:
        tokenizer.enable_truncation(max_length=seq_len)
        tokenizer.enable_padding(length=seq_len, pad_id=pad_id)
    return tokenizer


def is_validation(text: str, val_fraction: float, seed: int) -> bool:
    """Deterministic document-level split: the same document lands in the same split on every run."""
    return zlib.crc32(f"{seed}:{text}".encode()) < val_fraction * 2**32


def measure(batch: dict, tokenizer_json: str, min_tokens: int | None, max_tokens: int | None, val_fraction: float, seed: int) -> dict:
    """Adds n_tokens and is_val to the rows no stage has dropped (0 and False to the others), and drops (stage
    length_tokens) texts outside [min_tokens, max_tokens]."""
    kept = np.flatnonzero(batch["stage"] == "")
    texts = [str(batch["text"][i]) for i in kept]
    counts = [len(e.ids) for e in tokenizer_of(tokenizer_json).encode_batch(texts, add_special_tokens=False)]
    batch["n_tokens"], batch["is_val"] = np.zeros(len(batch["stage"]), dtype=np.int64), np.zeros(len(batch["stage"]), dtype=bool)
    batch["n_tokens"][kept] = counts
    batch["is_val"][kept] = [is_validation(text, val_fraction, seed) for text in texts]
    stage, reason = batch["stage"].astype(object), batch["reason"].astype(object)
    for i, count in zip(kept, counts):
        if min_tokens and count < min_tokens:
            stage[i], reason[i] = "length_tokens", f"shorter than min_tokens ({count} < {min_tokens})"
        elif max_tokens and count > max_tokens:
            stage[i], reason[i] = "length_tokens", f"longer than max_tokens ({count} > {max_tokens})"
    batch["stage"], batch["reason"] = stage, reason
    return batch


def answer_chars(context: str, answer: str, hint: int | None = None) -> tuple[int, int] | None:
    """The (start, end) characters of the answer in the context: the occurrence that starts nearest to `hint` (the
    corpus's answer_start, which normalization may have shifted a little), else the first; None when it is absent."""
    starts, at = [], context.find(answer)
    while answer and at >= 0:
        starts.append(at)
        at = context.find(answer, at + 1)
    if not starts:
        return None
    start = min(starts, key=lambda s: abs(s - hint)) if hint is not None else starts[0]
    return start, start + len(answer)


def answer_tokens(encoding: Encoding, chars: tuple[int, int]) -> tuple[int, int] | None:
    """The first and last token of the context (the pair's second sequence) that cover the answer's characters; None
    when truncation cut any of it off."""
    start, end = chars
    covering = [i for i, (sequence, (first, last)) in enumerate(zip(encoding.sequence_ids, encoding.offsets)) if sequence == 1 and first < end and last > start]
    if not covering or encoding.offsets[covering[-1]][1] < end:
        return None
    return covering[0], covering[-1]


def answer_span(encoding: Encoding, context: str, answer: str, answer_start) -> tuple[int, int] | str:
    """The answer's first and last token in the encoded question and context pair, or why it has none
    (`answer_start`: the corpus's, a str, or None when it gives none)."""
    try:
        hint = int(answer_start) if isinstance(answer_start, str) else None
    except ValueError:
        return f"answer_start is not an integer ({answer_start!r})"
    chars = answer_chars(context, answer, hint)
    if chars is None:
        return "answer not in the context"
    return answer_tokens(encoding, chars) or f"answer cut off by seq_len (it ends at character {chars[1]} of the context)"


def encode_pairs(batch: dict, tokenizer_json: str, seq_len: int, pad: int) -> list[Encoding]:
    """Question and context of each row as one sequence, the tokenizer's pair template ([CLS] question [SEP] context
    [SEP] for BERT's WordPiece), truncated (the longer of the two first) and padded to seq_len."""
    pairs = [(str(question), str(context)) for question, context in zip(batch["question"], batch["text"])]
    return tokenizer_of(tokenizer_json, seq_len, pad).encode_batch(pairs)


def question_answering_types(encoding: Encoding) -> list[int]:
    """Token types 0 for the question and 1 for the context: the pair template's own where it sets them (BERT's),
    else from the sequence each token came from (RoBERTa's template makes every token type 0). Evaluation reads the
    context by them; models.tasks gives them to a model only where it embeds two types."""
    if any(encoding.type_ids):
        return encoding.type_ids
    return [int(sequence == 1) for sequence in encoding.sequence_ids]


def answer_spans(batch: dict, encodings: list[Encoding]) -> list[tuple[int, int] | str]:
    starts = batch.get("answer_start", [None] * len(encodings))
    return [answer_span(*row) for row in zip(encodings, batch["text"], batch["answer"], starts)]


def check_answers(batch: dict, tokenizer_json: str, seq_len: int, pad: int) -> dict:
    """Drops (stage answer_span) the kept rows whose answer has no span in their encoded question and context."""
    kept = np.flatnonzero(batch["stage"] == "")
    rows = {column: batch[column][kept] for column in ("text", "question", "answer", "answer_start") if column in batch}
    stage, reason = batch["stage"].astype(object), batch["reason"].astype(object)
    for i, span in zip(kept, answer_spans(rows, encode_pairs(rows, tokenizer_json, seq_len, pad))):
        if isinstance(span, str):
            stage[i], reason[i] = "answer_span", span
    batch["stage"], batch["reason"] = stage, reason
    return batch


def pack(token_lists: list[list[int]], separator: int, seq_len: int) -> np.ndarray:
    """Concatenates documents, each ended by `separator`, and cuts the stream into full `seq_len` rows."""
    stream = np.fromiter((t for tokens in token_lists for t in (*tokens, separator)), dtype=np.int32)
    rows = len(stream) // seq_len
    return stream[: rows * seq_len].reshape(rows, seq_len)


def parts(batch: dict) -> dict:
    """Adds each row's part: the rows encoded together (a causal LM packs them into rows) and written as one shard,
    fixed by their place in the corpus (read.py's row_id: file index << 32 | line), so a part's shard does not depend
    on how Ray cut the data into blocks, and a preparation that was interrupted knows which parts it has written."""
    batch["part"] = batch["row_id"] >> PART_BITS
    return batch


def encode_part(batch: dict, task: str, **encoding) -> dict:
    """The rows of one part encoded for `task`, in corpus order: its staged files hand them over in no particular
    order, and augmented copies share their original's row_id."""
    order = sorted(range(len(batch["row_id"])), key=lambda i: (batch["row_id"][i], str(batch["text"][i])))
    return ENCODERS[task]({column: values[order] for column, values in batch.items()}, **encoding)


def encode_causal_lm(batch: dict, tokenizer_json: str, seq_len: int, separator: int, **_) -> dict:
    """Packs the documents of a batch, in its order, into full rows."""
    encoded = tokenizer_of(tokenizer_json).encode_batch([str(t) for t in batch["text"]], add_special_tokens=False)
    packed = {validation: pack([e.ids for e, val in zip(encoded, batch["is_val"]) if val == validation], separator, seq_len) for validation in (False, True)}
    return {
        "input_ids": np.concatenate([packed[False], packed[True]]),
        "is_val": np.repeat([False, True], [len(packed[False]), len(packed[True])]),
    }


def encode_classification(batch: dict, tokenizer_json: str, seq_len: int, pad: int, label_ids: dict, **_) -> dict:
    """[CLS] text [SEP] (the tokenizer's own template), truncated and padded to seq_len; the label's index."""
    encoded = tokenizer_of(tokenizer_json, seq_len, pad).encode_batch([str(t) for t in batch["text"]])
    return {
        "input_ids": np.array([e.ids for e in encoded], dtype=np.int32),
        "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int8),
        "labels": np.array([label_ids[label] for label in batch["label"]], dtype=np.int64),
        "is_val": batch["is_val"],
    }


def encode_seq2seq(batch: dict, tokenizer_json: str, seq_len: int, pad: int, separator: int, **_) -> dict:
    """Source and target each end with the separator (T5's </s>); padded target positions are ignored by the loss."""
    tokenizer = tokenizer_of(tokenizer_json)

    def ids(texts) -> np.ndarray:
        rows = np.full((len(texts), seq_len), pad, dtype=np.int64)
        for i, e in enumerate(tokenizer.encode_batch([str(t) for t in texts], add_special_tokens=False)):
            tokens = [*e.ids[: seq_len - 1], separator]
            rows[i, : len(tokens)] = tokens
        return rows

    source, target = ids(batch["text"]), ids(batch["target"])
    return {
        "input_ids": source.astype(np.int32),
        "attention_mask": (source != pad).astype(np.int8),
        "labels": np.where(target == pad, IGNORED_LABEL, target),
        "is_val": batch["is_val"],
    }


def encode_question_answering(batch: dict, tokenizer_json: str, seq_len: int, pad: int, **_) -> dict:
    """Question and context as one pair (encode_pairs), with the answer's first and last token. check_answers dropped
    the rows whose answer has no span before they got here; any such row this is given is left out, not mislabeled."""
    encodings = encode_pairs(batch, tokenizer_json, seq_len, pad)
    placed = [(encoding, span, val) for encoding, span, val in zip(encodings, answer_spans(batch, encodings), batch["is_val"]) if not isinstance(span, str)]
    encodings, spans, is_val = zip(*placed) if placed else ((), (), ())
    ids = np.array([e.ids for e in encodings], dtype=np.int32).reshape(len(encodings), seq_len)
    return {
        "input_ids": ids,
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int8).reshape(ids.shape),
        "token_type_ids": np.array([question_answering_types(e) for e in encodings], dtype=np.int8).reshape(ids.shape),
        "start_positions": np.array([start for start, _ in spans], dtype=np.int64),
        "end_positions": np.array([end for _, end in spans], dtype=np.int64),
        "is_val": np.array(is_val, dtype=bool),
    }


# Prompt, a newline, response, end-of-text: how sft renders a prompt/response record when neither the job nor the
# tokenizer gives a chat template. Generation then continues "prompt\n" and stops at the end-of-text token.
DEFAULT_CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{{ eos_token if message['role'] == 'assistant' else '\\n' }}{% endfor %}"
REPORT = "report"  # the key of what an encoder counted of its rows, kept in the part's record (not a column)


class UnusableRecord(ValueError):
    """A record the job cannot turn into an example; the message starts with the job setting to fix."""


@functools.lru_cache(maxsize=4)
def compiled_template(source: str):
    """transformers' own sandboxed Jinja environment, the one apply_chat_template renders with."""
    from transformers.utils.chat_template_utils import _compile_jinja_template

    return _compile_jinja_template(source)


def chat_of(text: str, target, messages_field: str | None) -> list[dict]:
    """The record as a chat: its messages (a JSON list of {role, content}), or its prompt and response as a user
    and an assistant message."""
    if not messages_field:
        return [{"role": "user", "content": str(text)}, {"role": "assistant", "content": str(target)}]
    try:
        messages = json.loads(text)
    except json.JSONDecodeError:
        messages = None
    if not isinstance(messages, list) or not all(isinstance(m, dict) and {"role", "content"} <= m.keys() for m in messages):
        raise UnusableRecord(f"data.messages_field: {messages_field!r} is not a list of {{role, content}} messages")
    return messages


def generation_prompt(prompt: str, template: str, special_tokens: dict) -> str:
    """What a model trained on rendered records continues with its response to `prompt`."""
    return compiled_template(template).render(messages=[{"role": "user", "content": prompt}], add_generation_prompt=True, **special_tokens)


def chat_segments(messages: list[dict], template: str, special_tokens: dict) -> list[tuple[str, bool]]:
    """The chat rendered as (text, is_response) pieces. A response is what rendering the chat up to an assistant
    message adds to rendering the chat before it with the generation prompt: so its prompt is exactly what
    generation starts from."""
    import jinja2

    compiled, segments, rendered = compiled_template(template), [], ""
    try:
        for end, message in enumerate(messages, 1):
            if message["role"] != "assistant":
                continue
            prompt = compiled.render(messages=messages[: end - 1], add_generation_prompt=True, **special_tokens)
            chat = compiled.render(messages=messages[:end], add_generation_prompt=False, **special_tokens)
            if not (prompt.startswith(rendered) and chat.startswith(prompt)):
                raise UnusableRecord("data.chat_template: it does not render a chat as the rendering of its start followed by the rest")
            segments += [(prompt[len(rendered) :], False), (chat[len(prompt) :], True)]
            rendered = chat
    except (jinja2.TemplateError, TypeError, KeyError) as err:
        raise UnusableRecord(f"data.chat_template: cannot render a record ({type(err).__name__}: {err})") from None
    return segments


def sft_example(segments: list[tuple[str, bool]], tokenizer: Tokenizer, seq_len: int, train_on_inputs: bool) -> tuple[list[int], list[int]]:
    """Token ids of the rendered pieces, cut to seq_len, and their labels: the token itself where the loss trains on
    it (the responses; every token with train_on_inputs), else IGNORED_LABEL. The first token is never a label: as in
    a row of its own, nothing precedes it, and in a packed row the example before it must not predict it."""
    encoded = tokenizer.encode_batch([text for text, _ in segments], add_special_tokens=False)
    ids = [token for e in encoded for token in e.ids][:seq_len]
    trained = [response or train_on_inputs for e, (_, response) in zip(encoded, segments) for _ in e.ids][:seq_len]
    labels = [token if train else IGNORED_LABEL for token, train in zip(ids, trained)]
    return ids, [IGNORED_LABEL, *labels[1:]] if labels else []


def rows_of_examples(examples: list[tuple[list[int], list[int]]], seq_len: int, pad: int, packing: bool) -> dict:
    """Examples in rows of seq_len tokens: with packing, as many whole examples back to back as fit, in order; else
    one per row. Position ids restart at 0 with each example (and with the padding after the last); padding is
    never a label."""
    rows: list[list[tuple[list[int], list[int]]]] = []
    for example in examples:
        if packing and rows and sum(len(ids) for ids, _ in rows[-1]) + len(example[0]) <= seq_len:
            rows[-1].append(example)
        else:
            rows.append([example])
    input_ids = np.full((len(rows), seq_len), pad, dtype=np.int32)
    labels = np.full((len(rows), seq_len), IGNORED_LABEL, dtype=np.int32)
    position_ids = np.zeros((len(rows), seq_len), dtype=np.int32)
    for i, row in enumerate(rows):
        start = 0
        for ids, example_labels in row:
            input_ids[i, start : start + len(ids)], labels[i, start : start + len(ids)] = ids, example_labels
            position_ids[i, start : start + len(ids)] = np.arange(len(ids))
            start += len(ids)
        position_ids[i, start:] = np.arange(seq_len - start)
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}


def encode_sft(
    batch: dict,
    tokenizer_json: str,
    seq_len: int,
    pad: int | None,
    separator: int,
    chat_template: str,
    special_tokens: dict,
    messages_field: str | None,
    train_on_inputs: bool,
    packing: bool,
    **_,
) -> dict:
    """Each record rendered (chat_segments) and labelled (sft_example). Training rows are packed (with `packing`);
    validation rows hold one example each, labelled on its responses alone, so that evaluation can generate from
    each prompt. Records that cannot be rendered and examples left with no response token are counted, with the
    first problem, under REPORT: the driver turns them into job errors."""
    tokenizer = tokenizer_of(tokenizer_json)
    examples: dict[bool, list] = {False: [], True: []}
    report = {"examples": len(batch["text"]), "unusable": 0, "no_response": 0, "problem": None}
    targets = batch.get("target", [None] * len(batch["text"]))
    for text, target, row_id, validation in zip(batch["text"], targets, batch["row_id"], batch["is_val"]):
        try:
            segments = chat_segments(chat_of(text, target, messages_field), chat_template, special_tokens)
        except UnusableRecord as err:
            report["unusable"] += 1
            report["problem"] = report["problem"] or {"row_id": int(row_id), "reason": str(err)}
            continue
        ids, labels = sft_example(segments, tokenizer, seq_len, train_on_inputs and not validation)
        if all(label == IGNORED_LABEL for label in labels):
            report["no_response"] += 1
            continue
        examples[bool(validation)].append((ids, labels))
    pad = separator if pad is None else pad
    train, val = rows_of_examples(examples[False], seq_len, pad, packing), rows_of_examples(examples[True], seq_len, pad, packing=False)
    encoded = {column: np.concatenate([train[column], val[column]]) for column in train}
    return encoded | {"is_val": np.repeat([False, True], [len(train["input_ids"]), len(val["input_ids"])]), REPORT: report}


def sft_problem(reports: list[dict], response_option: str) -> tuple[str, int | None] | None:
    """The job error that the parts' encoding reports add up to, and the row it names (its row_id), or None: a
    record that cannot be rendered, or no example with a response token left after truncation."""
    if unusable := [report for report in reports if report["unusable"]]:
        count = sum(report["unusable"] for report in unusable)
        problem = unusable[0]["problem"]
        return f"{problem['reason']}; {count} record(s) like it", problem["row_id"]
    if sum(report["examples"] for report in reports) == sum(report["no_response"] for report in reports):
        return f"{response_option}: every response is empty after truncation to data.seq_len tokens; raise data.seq_len or shorten the prompts", None
    return None


ENCODERS: dict[str, Callable[..., dict]] = {
    "causal_lm": encode_causal_lm,
    "sequence_classification": encode_classification,
    "seq2seq": encode_seq2seq,
    "sft": encode_sft,
    "question_answering": encode_question_answering,
}
