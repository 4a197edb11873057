"""Text augmentation for classification: noisy copies of training texts that keep their label.

Each copy applies word dropout, then neighbour swaps, then character noise. The random generator of a copy is
seeded by (augment.seed, the text, the copy number), so a run's augmented set is the same every time and
does not depend on how Ray Data batches the rows. Validation texts are never augmented.
"""

import string
import zlib

import numpy as np

from orchestrator.config.job import AugmentConfig

LETTERS = string.ascii_lowercase


def word_dropout(words: list[str], p: float, rng: np.random.Generator) -> list[str]:
    kept = [word for word in words if rng.random() >= p]
    return kept or words[:1]  # never an empty text


def word_swap(words: list[str], p: float, rng: np.random.Generator) -> list[str]:
    words = list(words)
    for i in range(len(words) - 1):
        if rng.random() < p:
            words[i], words[i + 1] = words[i + 1], words[i]
    return words


def char_noise(text: str, p: float, rng: np.random.Generator) -> str:
    return "".join(LETTERS[rng.integers(len(LETTERS))] if c.isalpha() and rng.random() < p else c for c in text)


def augmented(text: str, cfg: AugmentConfig, copy: int) -> str:
    rng = np.random.default_rng([cfg.seed, copy, zlib.crc32(text.encode())])
    words = word_swap(word_dropout(text.split(), cfg.word_dropout, rng), cfg.word_swap, rng)
    return char_noise(" ".join(words), cfg.char_noise, rng)


def add_augmented_copies(batch: dict, cfg: AugmentConfig) -> dict:
    """The batch plus cfg.copies augmented copies of each of its training rows (appended, same columns)."""
    train = np.flatnonzero(~batch["is_val"])
    copies = {column: [values] for column, values in batch.items()}
    for copy in range(1, cfg.copies + 1):
        for column, values in batch.items():
            copies[column].append(values[train])
        copies["text"][-1] = np.array([augmented(str(t), cfg, copy) for t in batch["text"][train]], dtype=object)
    return {column: np.concatenate(parts) for column, parts in copies.items()}
