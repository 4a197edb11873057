"""The model of a finished training run (train/export.py) turned into predictions: one `Predictor` holds the
model and tokenizer, and is what both batch inference (inference/batch.py) and the MLflow model (tracking/model.py)
run. It needs no Ray. Inputs are tokenized as in training (data/encode.py) but padded per batch, not to seq_len.
"""

import json
from pathlib import Path

import numpy as np
import torch
import transformers

from orchestrator.config.errors import UserError
from orchestrator.data.encode import IGNORED_LABEL, answer_span, chat_of, chat_segments, generation_prompt, question_answering_types, sft_example
from orchestrator.data.tokenizers import separator_id, template_tokens
from orchestrator.models.answers import best_overlap_sentence, best_spans
from orchestrator.models.tasks import TASKS, padded

MODEL_CARD = "orchestrator.json"  # written beside the model by train/export.py
CAUSAL_NEW_TOKENS = 32  # continuation length of causal_lm predictions
# What predict mode returns for each task, with the MLflow type of each column (the logged model's signature).
PREDICTION_COLUMNS = {
    "sequence_classification": {"predicted": "string", "score": "float"},
    "seq2seq": {"generated": "string"},
    "causal_lm": {"generated": "string"},
    "sft": {"generated": "string"},
    "question_answering": {"answer": "string", "score": "float"},
}
# What predict mode reads of each row beyond its text (the context, for question answering).
EXTRA_INPUTS = {"question_answering": ("question",)}


def read_card(model_dir: str | Path) -> dict:
    path = Path(model_dir) / MODEL_CARD
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UserError(f"model: {path} is corrupt (not JSON)") from None


def _row_losses(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """Mean cross-entropy of each row over its scored (not ignored) positions."""
    losses = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORED_LABEL, reduction="none")
    return (losses.sum(1) / (labels != IGNORED_LABEL).sum(1).clamp(min=1)).numpy()


class Predictor:
    """One model per actor of a `map_batches` pool. Predict mode returns source, text and the prediction columns;
    evaluate mode returns what the task's metrics need: predictions, the true label index, reference text or answer
    (with the baseline's answer), and each row's loss."""

    def __init__(self, model_dir: str, evaluate: bool = False, cpus: int = 1):
        torch.set_num_threads(cpus)  # torch would otherwise take every core of the node, which the other actors share
        card = read_card(model_dir)
        self.task, self.seq_len, self.evaluate = card["task"], card["seq_len"], evaluate
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
        self.separator = separator_id(self.tokenizer)
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.separator
        auto_class = getattr(transformers, TASKS[self.task].auto_class)
        # fp32 whatever the export's dtype: half-precision matmuls are slow or missing on CPU.
        self.model = auto_class.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.feeding = TASKS[self.task].for_model(self.model.config)  # which inputs this model takes (Task.model_inputs)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        columns = self.columns([str(text) for text in batch["text"]], batch)
        return columns if self.evaluate else {"source": batch["source"], "text": batch["text"], **columns}

    def columns(self, texts: list[str], batch: dict | None = None) -> dict[str, np.ndarray]:
        """The task's prediction columns for `texts`; `batch` holds the questions (question answering), and in evaluate
        mode the labels, targets or answers."""
        run = {
            "sequence_classification": self._classify,
            "seq2seq": self._seq2seq,
            "causal_lm": self._causal_lm,
            "sft": self._sft,
            "question_answering": self._answer,
        }
        with torch.no_grad():
            return run[self.task](texts, batch)

    def _ended(self, texts: list[str]) -> list[list[int]]:
        """Token ids ended by the separator and cut to seq_len, as encode_seq2seq has them."""
        encoded = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [[*ids[: self.seq_len - 1], self.separator] for ids in encoded]

    def _classify(self, texts: list[str], batch: dict) -> dict:
        # The tokenizer's own template ([CLS] text [SEP] for WordPiece), as in encode_classification.
        inputs = padded(self.tokenizer(texts, truncation=True, max_length=self.seq_len)["input_ids"], self.pad)
        logits = self.model(**inputs).logits.float()
        score, index = logits.softmax(-1).max(-1)
        predicted = [self.model.config.id2label[i] for i in index.tolist()]
        columns = {"predicted": np.array(predicted), "score": score.numpy()}
        if self.evaluate:
            labels = torch.tensor([self.model.config.label2id[label] for label in batch["label"]])
            loss = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
            columns |= {"label": labels.numpy(), "loss": loss.numpy()}
        return columns

    def _seq2seq(self, texts: list[str], batch: dict) -> dict:
        inputs = padded(self._ended(texts), self.pad)
        generated = self.model.generate(**inputs, max_new_tokens=self.seq_len, do_sample=False, num_beams=1)
        columns = {"generated": np.array(self.tokenizer.batch_decode(generated, skip_special_tokens=True))}
        if self.evaluate:
            references = [str(target) for target in batch["target"]]
            labels = padded(self._ended(references), IGNORED_LABEL)["input_ids"]
            loss = _row_losses(self.model(**inputs, labels=labels).logits, labels)
            columns |= {"reference": np.array(references), "loss": loss}
        return columns

    def _answer(self, texts: list[str], batch: dict) -> dict:
        """The best span of each context (`texts`) for its question, as encode_question_answering frames them, and its
        probability (of its start times of its end); evaluate mode adds the true answer, the baseline's and the loss
        (NaN where the answer has no span: absent, or cut off by seq_len)."""
        questions = [str(question) for question in batch["question"]]
        inputs = self.tokenizer(questions, texts, truncation=True, max_length=self.seq_len, padding=True, return_offsets_mapping=True, return_tensors="pt")
        offsets = inputs.pop("offset_mapping").tolist()
        # as in training, whatever token types the tokenizer's own call would give (or leave out)
        inputs["token_type_ids"] = torch.tensor([question_answering_types(encoding) for encoding in inputs.encodings])
        context = torch.tensor([[sequence == 1 for sequence in inputs.sequence_ids(i)] for i in range(len(texts))])
        outputs = self.model(**self.feeding.model_inputs(dict(inputs)))
        starts, ends = best_spans(outputs.start_logits, outputs.end_logits, context)
        start_p, end_p = (logits.float().masked_fill(~context, float("-inf")).softmax(-1).nan_to_num() for logits in (outputs.start_logits, outputs.end_logits))
        rows = range(len(texts))
        columns = {
            "answer": np.array([text[offsets[i][start][0] : offsets[i][end][1]] for i, text, start, end in zip(rows, texts, starts.tolist(), ends.tolist())]),
            "score": (start_p[rows, starts] * end_p[rows, ends]).numpy(),
        }
        if self.evaluate:
            answers, hints = [str(answer) for answer in batch["answer"]], batch.get("answer_start", [None] * len(texts))
            spans = [answer_span(inputs.encodings[i], texts[i], answers[i], hints[i]) for i in rows]
            positions = torch.tensor([span if isinstance(span, tuple) else (IGNORED_LABEL, IGNORED_LABEL) for span in spans])
            loss = (
                sum(
                    torch.nn.functional.cross_entropy(logits.float(), positions[:, end], reduction="none")
                    for end, logits in enumerate((outputs.start_logits, outputs.end_logits))
                )
                / 2
            )
            loss[positions[:, 0] == IGNORED_LABEL] = float("nan")
            baseline = [best_overlap_sentence(question, text) for question, text in zip(questions, texts)]
            columns |= {"reference": np.array(answers), "baseline": np.array(baseline), "loss": loss.numpy()}
        return columns

    def _causal_lm(self, texts: list[str], batch: dict) -> dict:
        encoded = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        if self.evaluate:  # perplexity needs the loss only: no generation
            # As packed in training: after a separator and ended by one, so even an empty text has a token to score.
            inputs = padded([[self.separator, *ids[: self.seq_len - 2], self.separator] for ids in encoded], self.pad)
            labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, IGNORED_LABEL)
            return {"loss": _row_losses(self.model(**inputs).logits[:, :-1], labels[:, 1:])}
        # In training a document follows a separator; the prompt keeps its end, leaving positions for the continuation.
        positions = getattr(self.model.config, "max_position_embeddings", None) or self.seq_len + CAUSAL_NEW_TOKENS
        keep = max(1, min(self.seq_len, positions - CAUSAL_NEW_TOKENS))
        prompts = [[self.separator, *ids][-keep:] for ids in encoded]
        inputs = padded(prompts, self.pad, left=True)
        generated = self.model.generate(**inputs, max_new_tokens=CAUSAL_NEW_TOKENS, do_sample=False, num_beams=1, pad_token_id=self.pad)
        continuations = generated[:, inputs["input_ids"].shape[1] :]
        return {"generated": np.array(self.tokenizer.batch_decode(continuations, skip_special_tokens=True))}

    def _sft(self, texts: list[str], batch: dict) -> dict:
        """The response to each text as a prompt, rendered with the chat template training used (the exported
        tokenizer keeps it); evaluate mode also scores the reference responses' tokens, labelled as in training."""
        template, special = self.tokenizer.chat_template, template_tokens(self.tokenizer)
        rendered = [generation_prompt(text, template, special) for text in texts]
        prompts = [ids[: self.seq_len - 1] for ids in self.tokenizer(rendered, add_special_tokens=False)["input_ids"]]
        inputs = padded(prompts, self.pad, left=True)
        width = inputs["input_ids"].shape[1]
        generated = self.model.generate(**inputs, max_new_tokens=max(self.seq_len - width, 1), do_sample=False, num_beams=1, pad_token_id=self.pad)
        columns = {"generated": np.array(self.tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True))}
        if self.evaluate:
            references = [str(target) for target in batch["target"]]
            examples = [
                sft_example(chat_segments(chat_of(text, target, None), template, special), self.tokenizer.backend_tokenizer, self.seq_len, False)
                for text, target in zip(texts, references)
            ]
            inputs = padded([ids for ids, _ in examples], self.pad)
            labels = padded([labels for _, labels in examples], IGNORED_LABEL)["input_ids"]
            columns |= {"reference": np.array(references), "loss": _row_losses(self.model(**inputs).logits[:, :-1], labels[:, 1:])}
        return columns
