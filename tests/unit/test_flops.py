import pytest
import torch
import transformers

from orchestrator.train.flops import flops_per_token, matmul_parameters, mfu, model_flops_per_token, peak_flops
from orchestrator.train.timeline import Timeline, format_phases


def on_meta(config_class, model_class, **keys):
    """A model's shapes without allocating its weights."""
    with torch.device("meta"):
        return getattr(transformers, model_class)(getattr(transformers, config_class)(**keys))


def test_gpt2_124m_matches_the_count_nanogpt_uses():
    model = on_meta("GPT2Config", "GPT2LMHeadModel")  # the defaults are GPT-2 small
    assert sum(p.numel() for p in model.parameters()) == 124_439_808
    # all but the 1024 x 768 position table; the token table is also the output layer, so it counts
    assert matmul_parameters(model) == 124_439_808 - 1024 * 768
    assert model_flops_per_token(model, seq_len=1024) == 6 * 123_653_376 + 12 * 12 * 768 * 1024


def test_untied_input_embedding_is_a_lookup_and_the_output_layer_a_matmul():
    model = on_meta(
        "LlamaConfig",
        "LlamaForCausalLM",
        vocab_size=1000,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        tie_word_embeddings=False,
    )
    total = sum(p.numel() for p in model.parameters())
    assert matmul_parameters(model) == total - 1000 * 64


def test_classifier_embeddings_are_all_lookups():
    model = on_meta(
        "BertConfig",
        "BertForSequenceClassification",
        vocab_size=1000,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=128,
        num_labels=3,
    )
    lookups = (1000 + 128 + 2) * 64  # words, positions, token types
    assert matmul_parameters(model) == sum(p.numel() for p in model.parameters()) - lookups


def test_encoder_decoder_attends_three_times_per_layer_pair():
    model = on_meta("T5Config", "T5ForConditionalGeneration", vocab_size=1000, d_model=64, d_kv=32, num_heads=4, num_layers=2, d_ff=128)
    attention = 12 * (2 + 2 * 2) * (4 * 32) * 16  # encoder self; decoder self and cross; heads x d_kv wide
    assert model_flops_per_token(model, seq_len=16) == 6 * matmul_parameters(model) + attention


@pytest.mark.parametrize(
    ("device", "precision", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", "bf16", 989e12),
        ("NVIDIA H100 PCIe", "bf16", 756e12),
        ("NVIDIA H200", "fp32", 67e12),
        ("NVIDIA A100-SXM4-40GB", "fp16", 312e12),
        ("Tesla T4", "fp16", None),
    ],
)
def test_peak_flops_by_device_name(device, precision, peak):
    assert peak_flops(device, precision) == peak


def test_mfu_is_per_worker_achieved_over_peak():
    assert flops_per_token(100, 2, 8, 4) == 600 + 12 * 2 * 8 * 4
    assert mfu(tokens_per_s=1000, model_flops_per_token=10**9, workers=2, peak_per_worker=1e12) == pytest.approx(0.5)


def test_timeline_phases_are_the_times_between_marks(monkeypatch):
    clock = iter([10.0, 13.5, 20.0])
    monkeypatch.setattr("orchestrator.train.timeline.time.time", lambda: next(clock))
    timeline = Timeline(started=9.0)
    for phase in ("ray_connect", "data_prepare", "first_step"):
        timeline.mark(phase)
    assert timeline.phases() == {"ray_connect": 1.0, "data_prepare": 3.5, "first_step": 6.5}
    assert timeline.total() == 11.0
    assert format_phases(timeline.phases()) == "ray connect 1.0 s, data prepare 3.5 s, first step 6.5 s"
