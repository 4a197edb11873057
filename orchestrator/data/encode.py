"""Clean rows -> the token tensors a task trains on. Pure functions over numpy batches, run by Ray Data's map_batches.

- measure: token count of each text (for the report and the token-length stage) and its split (train or val);
- encode: one registry entry per task, run on one part of the corpus at a time (encode_part). Causal LM packs
  documents back to back into full rows of seq_len tokens; classification and seq2seq truncate and pad each example
  to seq_len, with an attention mask.
The tokenizer travels as its JSON string and is built once per worker process.
"""

import functools
import zlib
from collections.abc import Callable

import numpy as np
from tokenizers import Tokenizer

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


ENCODERS: dict[str, Callable[..., dict]] = {
    "causal_lm": encode_causal_lm,
    "sequence_classification": encode_classification,
    "seq2seq": encode_seq2seq,
}
