"""Extractive question answering: the answer span a model predicts, how a predicted answer is scored (exact match and
token F1 as the official SQuAD v1.1 evaluation script defines them) and the best-overlap-sentence baseline.

Pure functions; torch is imported by the one that needs it, on the workers.
"""

import re
import string
from collections import Counter

MAX_ANSWER_TOKENS = 30  # longest span predicted (SQuAD's and Hugging Face's run_qa default)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def normalize_answer(text: str) -> str:
    """SQuAD's normalization: lowercase, punctuation removed, articles (a, an, the) removed, whitespace collapsed."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def exact_match(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def token_f1(prediction: str, truth: str) -> float:
    """F1 of the normalized answers' bags of words."""
    predicted, true = normalize_answer(prediction).split(), normalize_answer(truth).split()
    common = sum((Counter(predicted) & Counter(true)).values())
    if not common:
        return 0.0
    precision, recall = common / len(predicted), common / len(true)
    return 2 * precision * recall / (precision + recall)


def answer_scores(predictions: list[str], truths: list[str]) -> tuple[float, float]:
    """Mean exact match and mean token F1, in percent (as SQuAD reports them)."""
    count = max(len(truths), 1)
    return (
        100 * sum(map(exact_match, predictions, truths)) / count,
        100 * sum(map(token_f1, predictions, truths)) / count,
    )


def best_overlap_sentence(question: str, context: str) -> str:
    """The baseline answer: the sentence of the context that shares the most (normalized) words with the question,
    the first of those that share as many."""
    words = set(normalize_answer(question).split())
    sentences = [sentence for sentence in _SENTENCE_END.split(context.strip()) if sentence] or [context]
    return max(sentences, key=lambda sentence: len(words & set(normalize_answer(sentence).split())))


def best_spans(start_logits, end_logits, allowed, max_tokens: int = MAX_ANSWER_TOKENS):
    """The (start, end) token positions, each a (batch,) tensor, that maximise start + end logit with start <= end,
    at most `max_tokens` tokens long, both where `allowed` (a (batch, tokens) boolean tensor: the context) is true."""
    import torch

    length = start_logits.shape[1]
    scores = start_logits.float()[:, :, None] + end_logits.float()[:, None, :]
    ordered = torch.ones(length, length, dtype=torch.bool, device=scores.device)
    ordered = ordered.triu() & ~ordered.triu(max_tokens)  # end - start in [0, max_tokens)
    valid = ordered & allowed[:, :, None] & allowed[:, None, :]
    best = scores.masked_fill(~valid, float("-inf")).flatten(1).argmax(1)
    return best // length, best % length
