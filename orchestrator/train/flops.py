"""Model FLOPs per token, achieved FLOP/s and model FLOPs utilisation (MFU), as in the PaLM paper (appendix B).

A training token costs 6 FLOPs per weight it multiplies (2 forward, 4 backward) plus the attention scores and their
weighted sum: 12 x attention layers x attention width x sequence length. Embedding lookups cost nothing; a tied output
embedding is a matmul and counts. MFU is what a worker achieves over its accelerator's dense peak at the precision
it trains in; CPUs have no entry in the table, so on CPU only achieved FLOP/s is reported.
"""

import torch

# Dense (no sparsity) peak FLOP/s per device, from NVIDIA's datasheets (SXM parts unless named). fp32 is the plain
# fp32 figure: PyTorch does not use TF32 for matmuls unless told to.
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12},
    "H100 PCIe": {"bf16": 756e12, "fp16": 756e12, "fp32": 51e12},
    "H100": {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12},
    "A100": {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12},
}


def flops_per_token(matmul_params: int, attention_layers: int, attention_width: int, seq_len: int) -> int:
    """Training FLOPs per token: 6N + 12 * L * (heads * head_dim) * T."""
    return 6 * matmul_params + 12 * attention_layers * attention_width * seq_len


def peak_flops(device_name: str, precision: str) -> float | None:
    """The table's entry whose name the device's name contains (the longest, so "H100 PCIe" wins over "H100")."""
    matches = [name for name in PEAK_FLOPS if name.lower() in device_name.lower()]
    return PEAK_FLOPS[max(matches, key=len)][precision] if matches else None


def mfu(tokens_per_s: float, model_flops_per_token: int, workers: int, peak_per_worker: float) -> float:
    return tokens_per_s * model_flops_per_token / workers / peak_per_worker


def parameter_count(parameter: torch.nn.Parameter) -> int:
    return getattr(parameter, "ds_numel", parameter.numel())  # ZeRO-3 keeps only a shard in .data


def matmul_parameters(model: torch.nn.Module) -> int:
    """Parameters that multiply activations: all of them but embedding tables that are only looked up."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = output.weight if output is not None else None
    lookups = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding) and m.weight is not tied}
    return sum(parameter_count(p) for p in model.parameters() if id(p) not in lookups)


def model_flops_per_token(model: torch.nn.Module, seq_len: int) -> int:
    """From a Hugging Face model: its matmul parameters, and its attention layers (an encoder-decoder's decoder
    layers attend twice: to themselves and to the encoder)."""
    config = model.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or getattr(config, "d_kv", None) or config.hidden_size // heads
    layers = config.num_hidden_layers
    if config.is_encoder_decoder:
        layers += 2 * getattr(config, "num_decoder_layers", layers)
    return flops_per_token(matmul_parameters(model), layers, heads * head_dim, seq_len)


def device_peak_flops(use_gpu: bool, precision: str) -> float | None:
    """This worker's accelerator peak, or None (a CPU, or an accelerator not in the table)."""
    if not (use_gpu and torch.cuda.is_available()):
        return None
    return peak_flops(torch.cuda.get_device_name(), precision)
