"""Model families and size presets, in plain Python so that validation never imports torch.

Each family maps the job's family-neutral dimension names (``layers``, ``hidden``, ...) onto the keys of its
Hugging Face config class. Presets are starting points; ``model.dims`` overrides any of them.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    config_class: str  # name in `transformers`
    dim_keys: dict[str, str]  # job dimension name -> HF config key
    presets: dict[str, dict[str, int]]  # size name -> job dimensions
    fixed: dict  # HF config keys every model of the family gets
    dropout_keys: tuple[str, ...]  # HF config keys that model.dropout sets
    # the model-parallel layouts that can split it (keys of train.parallel.LAYOUTS): "tensor" where DeepSpeed's AutoTP
    # parses its layers (it refuses GPT-2, which has a kernel policy), "pipeline" where models/pipeline.py cuts it
    model_parallel: tuple[str, ...] = ()
    heads_split_hidden: bool = True  # each head gets hidden / heads dimensions (T5 sizes its heads with d_kv instead)

    def config_keys(self, dims: dict[str, int]) -> dict:
        """The Hugging Face config keys that give a random-init model these job dimensions, and the fixed ones."""
        return self.fixed | {self.dim_keys[name]: value for name, value in dims.items()}


GPT2 = Family(
    config_class="GPT2Config",
    dim_keys={"layers": "n_layer", "hidden": "n_embd", "heads": "n_head", "ffn": "n_inner", "max_positions": "n_positions"},
    presets={
        "tiny": {"layers": 2, "hidden": 128, "heads": 4, "ffn": 512, "max_positions": 512},
        "small": {"layers": 12, "hidden": 768, "heads": 12, "ffn": 3072, "max_positions": 1024},  # GPT-2 124M
        "medium": {"layers": 24, "hidden": 1024, "heads": 16, "ffn": 4096, "max_positions": 1024},  # GPT-2 350M
    },
    fixed={},
    dropout_keys=("resid_pdrop", "embd_pdrop", "attn_pdrop"),
    model_parallel=("pipeline",),
)

LLAMA = Family(
    config_class="LlamaConfig",
    dim_keys={
        "layers": "num_hidden_layers",
        "hidden": "hidden_size",
        "heads": "num_attention_heads",
        "kv_heads": "num_key_value_heads",
        "ffn": "intermediate_size",
        "max_positions": "max_position_embeddings",
    },
    presets={
        "tiny": {"layers": 2, "hidden": 128, "heads": 4, "kv_heads": 2, "ffn": 344, "max_positions": 512},
        "small": {"layers": 12, "hidden": 768, "heads": 12, "kv_heads": 4, "ffn": 2048, "max_positions": 2048},
    },
    fixed={"tie_word_embeddings": False},
    dropout_keys=("attention_dropout",),
    model_parallel=("tensor",),
)

BERT = Family(  # encoders, for classification; the pretrained MiniLM of the fortunes example is one
    config_class="BertConfig",
    dim_keys={
        "layers": "num_hidden_layers",
        "hidden": "hidden_size",
        "heads": "num_attention_heads",
        "ffn": "intermediate_size",
        "max_positions": "max_position_embeddings",
    },
    presets={
        "tiny": {"layers": 2, "hidden": 128, "heads": 4, "ffn": 512, "max_positions": 512},
        "mini": {"layers": 6, "hidden": 384, "heads": 12, "ffn": 1536, "max_positions": 512},  # MiniLM-L6 shape
    },
    fixed={},
    dropout_keys=("hidden_dropout_prob", "attention_probs_dropout_prob"),
)

T5 = Family(  # encoder-decoder, for seq2seq; relative positions, so no max_positions
    config_class="T5Config",
    dim_keys={"layers": "num_layers", "hidden": "d_model", "heads": "num_heads", "ffn": "d_ff"},
    presets={
        "tiny": {"layers": 2, "hidden": 128, "heads": 4, "ffn": 512},
        "small": {"layers": 6, "hidden": 512, "heads": 8, "ffn": 2048},  # t5-small
    },
    fixed={"feed_forward_proj": "relu"},
    dropout_keys=("dropout_rate",),
    heads_split_hidden=False,
)

FAMILIES: dict[str, Family] = {"gpt2": GPT2, "llama": LLAMA, "bert": BERT, "t5": T5}
