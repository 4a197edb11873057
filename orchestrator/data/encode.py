"""Clean rows -> the token tensors a task trains on. Pure functions over numpy batches, run by Ray Data's map_batches.

- measure: token count of each text (for the report and the token-length stage) and its split (train or val);
- check_answers (question answering): drops (stage answer_span) the rows whose answer is not in the context, or is
  cut off when question and context are truncated to seq_len;
- encode: one registry entry per task, run on one part of the corpus at a time (encode_part). Causal LM packs
  documents back to back into full rows of seq_len tokens; classification, seq2seq and question answering truncate
  and pad each example to seq_len, with an attention mask.
The tokenizer travels as its JSON string and is built once per worker process.
"""

import functools
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
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int8).reshape(ids.shape),
        "start_positions": np.array([start for start, _ in spans], dtype=np.int64),
        "end_positions": np.array([end for _, end in spans], dtype=np.int64),
        "is_val": np.array(is_val, dtype=bool),
    }


ENCODERS: dict[str, Callable[..., dict]] = {
    "causal_lm": encode_causal_lm,
    "sequence_classification": encode_classification,
    "seq2seq": encode_seq2seq,
    "question_answering": encode_question_answering,
}
