"""Loads a local tokenizer or trains one on the corpus with Hugging Face `tokenizers`.

Tokenizers travel to Ray tasks and workers as their JSON serialisation: a few hundred kB, no shared files.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from orchestrator.config.errors import UserError
from orchestrator.config.job import TokenizerConfig
from orchestrator.config.paths import expand_path

if TYPE_CHECKING:  # imported where a tokenizer is wrapped: a driver on a cache hit needs no transformers
    from transformers import PreTrainedTokenizerFast

# Token that ends every document when documents are packed back to back (and every seq2seq text).
SEPARATOR_TOKENS = {"bpe": "<|endoftext|>", "wordpiece": "[SEP]"}
# Token that fills padded sequences (classification and seq2seq batches).
PAD_TOKENS = {"bpe": "<pad>", "wordpiece": "[PAD]"}


def _untrained(algorithm: str) -> tuple[Tokenizer, trainers.Trainer]:
    if algorithm == "bpe":  # byte-level, like GPT-2: never an unknown token
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        return tokenizer, lambda vocab: trainers.BpeTrainer(
            vocab_size=vocab, special_tokens=[SEPARATOR_TOKENS["bpe"], PAD_TOKENS["bpe"]], initial_alphabet=alphabet
        )
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    return tokenizer, lambda vocab: trainers.WordPieceTrainer(
        vocab_size=vocab, special_tokens=["[PAD]", "[UNK]", "[CLS]", SEPARATOR_TOKENS["wordpiece"], "[MASK]"]
    )


def train_tokenizer(cfg: TokenizerConfig, texts: Iterable[str]) -> PreTrainedTokenizerFast:
    tokenizer, make_trainer = _untrained(cfg.train)
    tokenizer.train_from_iterator(texts, trainer=make_trainer(cfg.vocab_size))
    return from_json(tokenizer.to_str())


def load_tokenizer(path: str) -> PreTrainedTokenizerFast:
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = expand_path(path)
    if os.path.isfile(path):
        return from_json(Tokenizer.from_file(path).to_str())
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise UserError(f"data.tokenizer.path: {path} has no fast (Rust) tokenizer; tokenizer.json is needed")
    return tokenizer


def from_json(tokenizer_json: str) -> PreTrainedTokenizerFast:
    """Wraps a `tokenizers` JSON string, naming its separator and padding tokens (the trained ones or a model's own)."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tokenizer_json))
    vocab = tokenizer.get_vocab()
    tokenizer.eos_token = named_token(vocab, SEPARATOR_TOKENS)
    tokenizer.pad_token = named_token(vocab, PAD_TOKENS)
    return tokenizer


def named_token(vocab: dict[str, int], candidates: dict[str, str]) -> str | None:
    """The first of the candidate tokens (SEPARATOR_TOKENS, PAD_TOKENS) the vocabulary has."""
    return next((token for token in candidates.values() if token in vocab), None)


def separator_id(tokenizer: PreTrainedTokenizerFast) -> int:
    token_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if token_id is None:
        raise UserError("data.tokenizer: the tokenizer has no end-of-text or separator token to pack documents with")
    return token_id


def template_tokens(tokenizer: PreTrainedTokenizerFast) -> dict[str, str]:
    """The special tokens a chat template names (eos_token, bos_token...), as apply_chat_template passes them."""
    return {name: token for name, token in tokenizer.special_tokens_map.items() if isinstance(token, str)}


def sample_rows(batch: dict[str, np.ndarray], every: int) -> dict[str, np.ndarray]:
    """About one row in `every` of a batch, chosen by a hash of its row_id: the same rows whatever the blocks, spread
    over every file and line alike (a multiplicative hash mixes the file index in the high bits into the low ones)."""
    mixed = (batch["row_id"].astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32)
    keep = mixed % np.uint64(every) == 0
    return {column: values[keep] for column, values in batch.items()}


def texts_of(batches: Iterator[dict]) -> Iterator[str]:
    """Every text of the rows (sources and targets of seq2seq pairs alike, contexts and questions), to train a
    tokenizer on."""
    for batch in batches:
        for column in ("text", "target", "question"):
            yield from (text for text in batch.get(column, ()) if text)
