"""Tasks: which model a job builds, what a batch feeds it and what an evaluation reports. The job's `task:` picks one.

The registry is plain Python so that validation never imports torch; what a task computes with (torch, scikit-learn,
sacrebleu, rouge-score) is imported inside the method that needs it, on the workers.
"""

import dataclasses
import math
from dataclasses import dataclass

from orchestrator.models.answers import answer_scores, best_overlap_sentence, best_spans


@dataclass(frozen=True)
class Task:
    auto_class: str  # transformers auto class that builds the model
    families: tuple[str, ...]  # model families it can train (keys of models.families)
    needs_fields: tuple[str, ...]  # data.<field> keys the job must set
    columns: tuple[str, ...]  # what data/encode.py writes for it and each batch holds
    metric_names: tuple[str, ...]  # eval/<name> metrics beyond eval/loss
    generates: bool = False  # evaluation decodes generated text (slow: capped by train.eval_batches)
    needs_one_of: tuple[str, ...] = ()  # data.<field> keys of which the job must set exactly one
    data_options: tuple[str, ...] = ()  # other data.<key> settings only this task reads

    @property
    def reported_metrics(self) -> tuple[str, ...]:
        """What a training run reports to Ray (and so what a sweep can optimise)."""
        return ("train/loss", "eval/loss", *(f"eval/{name}" for name in self.metric_names))

    def for_model(self, config) -> "Task":
        """The task as it feeds a model of this transformers config."""
        return self

    def model_inputs(self, batch: dict) -> dict:
        """Keyword arguments of the model for a batch of the task's columns."""
        return batch

    def predictions(self, model, batch: dict, outputs, tokenizer, zero3: bool) -> dict[str, list]:
        """What one validation batch contributes to the metrics beyond its loss (gathered over ranks)."""
        return {}

    def metrics(self, mean_loss: float, predictions: dict[str, list], label_names: list[str]) -> dict[str, float]:
        return {"eval/loss": mean_loss}


@dataclass(frozen=True)
class CausalLM(Task):
    def model_inputs(self, batch):
        # Hugging Face shifts the labels inside the model, so the labels are the inputs themselves.
        return {"input_ids": batch["input_ids"], "labels": batch["input_ids"]}

    def metrics(self, mean_loss, predictions, label_names):
        return {"eval/loss": mean_loss, "eval/perplexity": math.exp(min(mean_loss, 50.0))}


@dataclass(frozen=True)
class SequenceClassification(Task):
    def predictions(self, model, batch, outputs, tokenizer, zero3):
        return {"predicted": outputs.logits.argmax(-1).tolist(), "label": batch["labels"].tolist()}

    def metrics(self, mean_loss, predictions, label_names):
        from sklearn.metrics import accuracy_score, precision_recall_fscore_support

        truth, predicted = predictions["label"], predictions["predicted"]
        precision, recall, f1, _ = precision_recall_fscore_support(truth, predicted, labels=range(len(label_names)), average="macro", zero_division=0)
        majority = max(truth.count(label) for label in set(truth))
        return {
            "eval/loss": mean_loss,
            "eval/majority_accuracy": majority / len(truth),  # the baseline of always answering the commonest class
            "eval/accuracy": accuracy_score(truth, predicted),
            "eval/precision": precision,
            "eval/recall": recall,
            "eval/f1": f1,
        }


@dataclass(frozen=True)
class Seq2Seq(Task):
    def predictions(self, model, batch, outputs, tokenizer, zero3):
        # Under ZeRO-3 every rank holds a shard of each layer: all ranks must step through generate together.
        generated = model.generate(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            max_new_tokens=batch["labels"].shape[1],
            synced_gpus=zero3,
        )
        references = batch["labels"].masked_fill(batch["labels"] < 0, tokenizer.pad_token_id)
        return {
            "hypothesis": tokenizer.batch_decode(generated, skip_special_tokens=True),
            "reference": tokenizer.batch_decode(references, skip_special_tokens=True),
        }

    def metrics(self, mean_loss, predictions, label_names):
        return {"eval/loss": mean_loss, **generation_scores(predictions["hypothesis"], predictions["reference"])}


@dataclass(frozen=True)
class SFT(Task):
    """Instruction tuning of a causal LM: the labels are the response tokens (data/encode.py encode_sft), and the
    position ids restart at each example packed into a row. Without a cache (use_cache false) transformers reads
    those restarts as a block-diagonal causal mask (masking_utils.find_packed_sequence_indices), so no example
    attends to another; with one, it would mask causally across the whole row."""

    def model_inputs(self, batch):
        return {"input_ids": batch["input_ids"], "labels": batch["labels"], "position_ids": batch["position_ids"], "use_cache": False}

    def predictions(self, model, batch, outputs, tokenizer, zero3):
        """Greedy responses to the prompts of a validation batch (one example per row: the tokens before its first
        label), beside the references (the labelled tokens)."""
        from orchestrator.data.encode import IGNORED_LABEL

        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        answered = batch["labels"] != IGNORED_LABEL
        starts = answered.int().argmax(1).tolist()
        prompts = padded([row[:start] for row, start in zip(batch["input_ids"], starts)], pad, left=True)
        width = prompts["input_ids"].shape[1]
        generated = model.generate(
            **prompts,
            max_new_tokens=int(answered.sum(1).max()),
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
            synced_gpus=zero3,
        )
        references = [row[answered[i]] for i, row in enumerate(batch["input_ids"])]
        return {
            "hypothesis": tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True),
            "reference": tokenizer.batch_decode(references, skip_special_tokens=True),
        }

    def metrics(self, mean_loss, predictions, label_names):
        hypotheses, references = predictions["hypothesis"], predictions["reference"]
        exact = sum(hyp.strip() == ref.strip() for hyp, ref in zip(hypotheses, references))
        return {"eval/loss": mean_loss, "eval/exact_match": 100 * exact / max(len(references), 1), **generation_scores(hypotheses, references)}


@dataclass(frozen=True)
class QuestionAnswering(Task):
    # The batches' token types mark the context (data/encode.py question_answering_types). BERT embeds two types;
    # RoBERTa one (type 1 would index past its table), DistilBERT and decoders none: they are not given them.
    takes_token_types: bool = True

    def for_model(self, config):
        return dataclasses.replace(self, takes_token_types=getattr(config, "type_vocab_size", 0) >= 2)

    def model_inputs(self, batch):
        return batch if self.takes_token_types else {key: value for key, value in batch.items() if key != "token_type_ids"}

    def predictions(self, model, batch, outputs, tokenizer, zero3):
        """The answers predicted (the best span of the context), the true ones and the baseline's, decoded from the
        tokens: what the model saw (with an uncased WordPiece, lowercased and without accents), scored alike."""
        import torch

        ids = batch["input_ids"]
        template = torch.tensor(sorted(set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}), dtype=ids.dtype)  # [SEP], [PAD]...
        context = (batch["token_type_ids"] == 1) & (batch["attention_mask"] == 1) & ~torch.isin(ids, template)
        starts, ends = best_spans(outputs.start_logits, outputs.end_logits, context)
        spans = zip(starts.tolist(), ends.tolist(), batch["start_positions"].tolist(), batch["end_positions"].tolist())
        found: dict[str, list] = {"question": [], "answer": [], "predicted_answer": [], "baseline_answer": []}
        for row, types, in_context, (start, end, true_start, true_end) in zip(ids, batch["token_type_ids"], context, spans):
            question = tokenizer.decode(row[types == 0], skip_special_tokens=True)
            found["question"].append(question)
            found["answer"].append(tokenizer.decode(row[true_start : true_end + 1], skip_special_tokens=True))
            found["predicted_answer"].append(tokenizer.decode(row[start : end + 1], skip_special_tokens=True))
            found["baseline_answer"].append(best_overlap_sentence(question, tokenizer.decode(row[in_context])))
        return found

    def metrics(self, mean_loss, predictions, label_names):
        exact, f1 = answer_scores(predictions["predicted_answer"], predictions["answer"])
        baseline_exact, baseline_f1 = answer_scores(predictions["baseline_answer"], predictions["answer"])
        return {
            "eval/loss": mean_loss,
            "eval/exact_match": exact,
            "eval/f1": f1,
            # the context's sentence sharing the most words with the question, scored alike
            "eval/baseline_exact_match": baseline_exact,
            "eval/baseline_f1": baseline_f1,
        }


def padded(rows: list, pad: int, left: bool = False) -> dict:
    """input_ids and attention_mask of token rows (lists or tensors) padded to the longest; decoder-only generation
    pads on the left, so that each prompt is continued from its right end."""
    import torch

    width = max(map(len, rows))
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        input_ids[i, span] = torch.as_tensor(row, dtype=torch.long)
        attention_mask[i, span] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def generation_scores(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """Corpus BLEU and chrF (sacrebleu) and mean ROUGE-L F1 (rouge-score) of generated texts, in percent."""
    import sacrebleu
    from rouge_score import rouge_scorer

    hypotheses = [text.strip() for text in hypotheses]
    references = [text.strip() for text in references]
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rouge = [scorer.score(ref, hyp)["rougeL"].fmeasure for ref, hyp in zip(references, hypotheses)]
    return {
        "eval/bleu": sacrebleu.corpus_bleu(hypotheses, [references]).score,
        "eval/chrf": sacrebleu.corpus_chrf(hypotheses, [references]).score,
        "eval/rougeL": 100 * sum(rouge) / max(len(rouge), 1),
    }


TASKS: dict[str, Task] = {
    "causal_lm": CausalLM(
        "AutoModelForCausalLM",
        families=("gpt2", "llama"),
        needs_fields=(),
        columns=("input_ids",),
        metric_names=("perplexity",),
    ),
    "sequence_classification": SequenceClassification(
        "AutoModelForSequenceClassification",
        families=("bert",),
        needs_fields=("label_field",),
        columns=("input_ids", "attention_mask", "labels"),
        metric_names=("accuracy", "precision", "recall", "f1", "majority_accuracy"),
        data_options=("labels",),
    ),
    "seq2seq": Seq2Seq(
        "AutoModelForSeq2SeqLM",
        families=("t5",),
        needs_fields=("target_field",),
        columns=("input_ids", "attention_mask", "labels"),
        metric_names=("bleu", "chrf", "rougeL"),
        generates=True,
    ),
    "sft": SFT(
        "AutoModelForCausalLM",
        families=("gpt2", "llama"),
        needs_fields=(),
        needs_one_of=("target_field", "messages_field"),
        data_options=("chat_template", "train_on_inputs", "packing"),
        columns=("input_ids", "labels", "position_ids"),
        metric_names=("exact_match", "bleu", "chrf", "rougeL"),
        generates=True,
    ),
    "question_answering": QuestionAnswering(
        "AutoModelForQuestionAnswering",
        families=("bert",),
        needs_fields=("question_field", "answer_field"),
        columns=("input_ids", "attention_mask", "token_type_ids", "start_positions", "end_positions"),
        metric_names=("exact_match", "f1", "baseline_exact_match", "baseline_f1"),
        data_options=("answer_start_field",),
    ),
}
