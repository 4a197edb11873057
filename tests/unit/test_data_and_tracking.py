"""Pure pieces of the data path and of tracking, without Ray."""

from types import SimpleNamespace

import numpy as np

from orchestrator.config.job import TokenizerConfig
from orchestrator.data.encode import PART_BITS, encode_causal_lm, encode_part, is_validation, pack, parts
from orchestrator.data.tokenizers import from_json, separator_id, train_tokenizer
from orchestrator.tracking.params import flatten
from orchestrator.train.reporting import format_progress


def test_pack_cuts_full_rows_with_separators():
    rows = pack([[1, 2, 3], [4, 5], [6]], separator=0, seq_len=4)
    assert rows.tolist() == [[1, 2, 3, 0], [4, 5, 0, 6]]  # the last partial row is dropped
    assert pack([], separator=0, seq_len=4).shape == (0, 4)


def test_validation_split_is_deterministic_and_proportional():
    texts = [f"document {i}" for i in range(20000)]
    held_out = [is_validation(t, 0.1, seed=3) for t in texts]
    assert held_out == [is_validation(t, 0.1, seed=3) for t in texts]
    assert abs(sum(held_out) / len(texts) - 0.1) < 0.01
    assert held_out != [is_validation(t, 0.1, seed=4) for t in texts]
    assert not any(is_validation(t, 0.0, seed=3) for t in texts)


def test_a_part_packs_the_same_rows_in_whatever_order_its_documents_arrive():
    """Ray's group-by hands a part's rows over in no fixed order; packing follows the corpus (row_id)."""
    texts = [f"document {i} says {'words ' * (i % 5)}" for i in range(40)]
    tokenizer = train_tokenizer(TokenizerConfig(train="bpe", vocab_size=300), texts)
    batch = {"text": np.array(texts, dtype=object), "is_val": np.zeros(40, dtype=bool), "row_id": (3 << 32) + np.arange(40)}
    assert set(parts(dict(batch))["part"]) == {3 << (32 - PART_BITS)}  # 40 lines of file 3: one part

    def packed(order):
        shuffled = {column: values[order] for column, values in batch.items()}
        return encode_part(shuffled, "causal_lm", tokenizer_json=tokenizer.backend_tokenizer.to_str(), seq_len=8, separator=separator_id(tokenizer))[
            "input_ids"
        ]

    in_order = packed(np.arange(40))
    assert all(np.array_equal(packed(np.random.default_rng(seed).permutation(40)), in_order) for seed in range(3))


def test_trained_tokenizer_packs_documents():
    texts = [f"the cat {i} sees the dog. a bird sings {i % 7} times." for i in range(150)]
    for algorithm in ("bpe", "wordpiece"):
        tokenizer = train_tokenizer(TokenizerConfig(train=algorithm, vocab_size=300), texts)
        tokenizer = from_json(tokenizer.backend_tokenizer.to_str())  # as the workers receive it
        out = encode_causal_lm(
            {"text": np.array(texts, dtype=object), "is_val": np.array([is_validation(t, 0.2, 0) for t in texts])},
            tokenizer.backend_tokenizer.to_str(),
            seq_len=8,
            separator=separator_id(tokenizer),
        )
        assert out["input_ids"].shape[1] == 8 and len(out["input_ids"]) == len(out["is_val"])
        assert 0 < out["is_val"].sum() < len(out["is_val"])
        assert (out["input_ids"] == separator_id(tokenizer)).any()


def test_flatten_params():
    assert flatten({"train": {"optimizer": {"lr": 0.001, "betas": [0.9, 0.99]}}, "tags": {}}) == {
        "train.optimizer.lr": "0.001",
        "train.optimizer.betas": "[0.9, 0.99]",
        "tags": "{}",
    }


def test_progress_line():
    line = format_progress(50, 200, 3.21, 3e-4, 12345.6, 3725)
    assert line == "step 50/200 | loss 3.2100 | lr 3.00e-04 | 12,346 tok/s | eta 01:02:05"


def test_sweep_plots_of_trials_that_never_reached_their_metric_place_only_those_that_did(tmp_path):
    """A sweep whose trials all failed still ends with its summary, not an error of the plot's log axis."""
    import pandas as pd

    from orchestrator.tracking.plots import sweep_plots

    sweep = SimpleNamespace(metric="eval/loss", search_space={"train.optimizer.lr": {}})
    histories = {"a": {"train/lr": [(1, 0.001)]}}
    failed = pd.DataFrame({"trial_id": ["a", "b"], "train.optimizer.lr": [1e-3, 3e-3], "eval/loss": [float("nan")] * 2})
    sweep_plots(failed, histories, sweep, 10, str(tmp_path))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["eval_loss_by_trial.png", "lr_schedules.png"]
    sweep_plots(failed.assign(**{"eval/loss": [4.2, float("nan")]}), histories, sweep, 10, str(tmp_path))
    assert (tmp_path / "eval_loss_vs_lr.png").exists()
