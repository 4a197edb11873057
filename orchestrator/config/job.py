"""The job file's schema. Every key a user can write is declared here, with its default and documentation;
validation, `orchestrator schema` and the reference in docs/jobs.md all come from these classes.

Nothing here imports torch or ray: `orchestrator validate` must answer in well under a second.
"""

import json
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from orchestrator.config.errors import CONTROL_CHARACTERS
from orchestrator.config.names import Name, tag_problem
from orchestrator.models.auto_classes import buildable_model_types
from orchestrator.models.families import FAMILIES
from orchestrator.models.saved import saved_modules
from orchestrator.models.tasks import TASKS

# --- values: numbers with real bounds, paths without control characters -----------------------------
# Every number a job gives is bounded by what the machine and the libraries (torch, DeepSpeed, numpy) can take,
# with room to spare; the reference shows each bound.
MAX_WORKERS = 4096  # Ray Train workers, and any parallel degree
MAX_BATCH = 65536  # micro batch size, micro batches accumulated
MAX_DIM = 2**20  # any model dimension: width, heads, positions
MAX_MODEL_TYPE_CHARS = 100  # a model_type or module name of transformers: a few words
MAX_LAYERS = 1024  # the largest published models have fewer than 200; each layer costs start-up time to build
MAX_VOCAB = 2**20
MAX_SEQ_LEN = 2**20
MAX_STEPS = 10**9  # any count or interval of optimizer steps
MAX_EPOCHS = 10**6
MAX_TEXT_LENGTH = 2**31 - 1  # characters or tokens of one text
MAX_SEED = 2**31 - 1  # within numpy's seed range (2**32 - 1) with room for what is added to it (the epoch, the rank)
MAX_CHECKPOINTS_KEPT = 1000
MAX_RESTARTS = 10_000
MAX_CPUS_PER_WORKER = 1024
MAX_LR = 10.0
MAX_WEIGHT_DECAY = 10.0
MAX_EPS = 1.0
MAX_GRAD_CLIP = 1e6
MAX_SECONDS = 365 * 24 * 3600
MIN_SAMPLING_S = 0.1  # system metrics sampled more often would busy the CPU they measure
MAX_PATH_CHARS = 4096  # PATH_MAX on Linux
MAX_PATH_PART_BYTES = 255  # NAME_MAX: the longest name of one file or directory


def _not_bool_or_text(value: Any, kind: str) -> Any:
    """YAML booleans and quoted text are not numbers: `max_steps: yes` or `"0123"` fail instead of becoming 1 or 123."""
    if isinstance(value, (bool, str, bytes)):
        raise PydanticCustomError(f"{kind}_type", "Input should be a valid {kind}", {"kind": kind})
    return value


def _whole_number(value: Any) -> Any:
    if isinstance(value, float) and not value.is_integer():  # 32.0 from a quniform search is 32; inf and 1.5 are not
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return _not_bool_or_text(value, "integer")


def _path_the_system_takes(value: str) -> str:
    if CONTROL_CHARACTERS.search(value):
        raise PydanticCustomError("path_characters", "a path cannot hold control characters (NUL, newline, escape...)")
    if any(len(part.encode()) > MAX_PATH_PART_BYTES for part in value.split("/")):
        raise PydanticCustomError("path_part", f"a file or directory name has at most {MAX_PATH_PART_BYTES} bytes")
    return value


def _jinja_template(value: str) -> str:
    import jinja2

    try:
        jinja2.Environment().parse(value)
    except jinja2.TemplateSyntaxError as err:
        raise PydanticCustomError("jinja_syntax", "not a Jinja template: {error} (line {line})", {"error": err.message, "line": err.lineno}) from None
    return value


Int = Annotated[int, BeforeValidator(_whole_number)]
Real = Annotated[float, BeforeValidator(lambda value: _not_bool_or_text(value, "number"))]
Seed = Annotated[Int, Field(ge=0, le=MAX_SEED)]
PathText = Annotated[str, Field(max_length=MAX_PATH_CHARS), AfterValidator(_path_the_system_takes)]


class Section(BaseModel):
    """Unknown keys are errors: a typo must never silently fall back to a default. Floats are finite."""

    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)

    def changed_from_default(self, *names: str) -> list[str]:
        """Fields given a value other than their default (a resolved, dumped job must load back unchanged)."""
        return [name for name in names if getattr(self, name) != type(self).model_fields[name].get_default(call_default_factory=True)]


# --- model -------------------------------------------------------------------------------------------


class ModelDims(Section):
    """Explicit dimensions; each one set here overrides the size preset."""

    layers: Int | None = Field(None, gt=0, le=MAX_LAYERS, description="Transformer blocks (encoder-decoders: each side).")
    hidden: Int | None = Field(None, gt=0, le=MAX_DIM, description="Width of the hidden states.")
    heads: Int | None = Field(None, gt=0, le=MAX_DIM, description="Attention heads.")
    kv_heads: Int | None = Field(None, gt=0, le=MAX_DIM, description="Key/value heads (llama grouped-query attention).")
    ffn: Int | None = Field(None, gt=0, le=MAX_DIM, description="Width of the feed-forward layer.")
    max_positions: Int | None = Field(None, gt=0, le=MAX_DIM, description="Longest sequence the model takes (absolute-position models).")


class LoraConfig(Section):
    """Low-rank adapters (peft's LoRA, Hu et al. 2021): the pretrained weights stay frozen; each target module learns
    an update alpha/r · B·A of rank r, and a head the task adds (a classifier) trains whole."""

    r: Int = Field(8, ge=1, le=MAX_DIM, description="Rank of each update.")
    alpha: Real = Field(16.0, gt=0, le=MAX_DIM, description="Scale of the updates: alpha / r multiplies them.")
    dropout: Real = Field(0.0, ge=0, lt=1, description="Dropout on the adapters' inputs.")
    target_modules: Literal["all-linear"] | Annotated[list[Annotated[str, Field(min_length=1, max_length=MAX_MODEL_TYPE_CHARS)]], Field(min_length=1)] = Field(
        "all-linear",
        description="Modules that get adapters: names (a module matches when its name is this or ends in '.' and this, "
        "e.g. q_proj, v_proj or GPT-2's c_attn), or all-linear: every linear layer but the output head.",
    )

    def missing_targets(self, modules: set[str]) -> list[str]:
        """Targets that name none of the modules (peft's matching of a name list)."""
        if self.target_modules == "all-linear":
            return []
        return [target for target in self.target_modules if not any(is_named(module, target) for module in modules)]


def is_named(module: str, target: str) -> bool:
    """Whether a name of lora.target_modules names the module (by its full name or its last parts, as peft matches)."""
    return module == target or module.endswith(f".{target}")


# What Hugging Face configs call a dimension, across architectures (GPT-2, BERT/Llama and most others, T5).
HF_DIM_KEYS = {
    "layers": ("num_hidden_layers", "n_layer", "num_layers"),
    "hidden": ("hidden_size", "n_embd", "d_model"),
    "heads": ("num_attention_heads", "n_head", "num_heads"),
    "max_positions": ("max_position_embeddings", "n_positions"),
}
RANDOM_INIT_FAMILY = "gpt2"


class ModelConfig(Section):
    family: str | None = Field(
        None,
        max_length=MAX_MODEL_TYPE_CHARS,
        description=f"Architecture. A random-init model is one of models/families.py ({', '.join(FAMILIES)}; default "
        f"{RANDOM_INIT_FAMILY}); a pretrained model's is the model_type of its config.json (any the task's transformers "
        "auto class builds: qwen2, mistral, phi3, llama, gpt2, bert...), which this may repeat.",
    )
    size: str = Field("tiny", description="Size preset of the family (models/families.py), e.g. tiny or small.")
    dims: ModelDims = ModelDims()
    pretrained: PathText | None = Field(
        None,
        description="Local Hugging Face model directory to start from instead of random initialisation; its tokenizer "
        "too, unless data.tokenizer.path names another.",
    )
    dropout: Real | None = Field(None, ge=0, lt=1, description="Dropout probability (every dropout of a pretrained model); default: the model's own.")
    dtype: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="Dtype of the exported final model.")
    lora: LoraConfig | None = Field(None, description="Train low-rank adapters of the pretrained model instead of all of its weights; null: all.")

    @model_validator(mode="after")
    def _known_architecture(self):
        if self.lora and not self.pretrained:
            raise ValueError("lora: adapts a pretrained model; set model.pretrained")
        if self.pretrained:
            if self.changed_from_default("size", "dims"):
                raise ValueError("pretrained: a pretrained model brings its own dimensions; remove size and dims")
            if self.lora and (modules := saved_modules(Path(self.pretrained).expanduser())) and (missing := self.lora.missing_targets(modules)):
                leaves = sorted({name.rpartition(".")[2] for name in modules if not name.rpartition(".")[2].isdigit()})
                raise ValueError(f"lora.target_modules: the model has no module {missing[0]!r} (its modules end in {', '.join(leaves[:16])})")
            model_type = (self.pretrained_config() or {}).get("model_type")
            if self.family and model_type and model_type != self.family:
                raise ValueError(f"family: {self.pretrained} is a {model_type} model (got {self.family!r})")
            self.family = self.family or model_type
            return self
        self.family = self.family or RANDOM_INIT_FAMILY
        if self.family not in FAMILIES:
            raise ValueError(
                f"family: a random-init model is one of {', '.join(FAMILIES)} (got {self.family!r}); other architectures "
                "start from a local model directory (model.pretrained)"
            )
        presets = FAMILIES[self.family].presets
        if self.size not in presets:
            raise ValueError(f"size: {self.family} has sizes {', '.join(presets)} (got {self.size!r})")
        self._check_heads(self.dims_resolved())
        return self

    def _check_heads(self, dims: dict[str, int]) -> None:
        """Attention splits the width into heads, and grouped-query attention the heads into key/value groups."""
        if FAMILIES[self.family].heads_split_hidden and dims["hidden"] % dims["heads"]:
            raise ValueError(f"dims.heads: {dims['heads']} heads cannot split a hidden width of {dims['hidden']}")
        if dims.get("kv_heads") and dims["heads"] % dims["kv_heads"]:
            raise ValueError(f"dims.kv_heads: {dims['kv_heads']} key/value heads cannot group {dims['heads']} heads")

    def pretrained_config(self) -> dict | None:
        """The pretrained model's config.json, if it is there (a missing directory is reported by data/checks.py)."""
        path = Path(self.pretrained).expanduser() / "config.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def dims_resolved(self) -> dict[str, int]:
        """The preset with explicit dims laid over it (random-init models only)."""
        dims = dict(FAMILIES[self.family].presets[self.size])
        dims.update(self.dims.model_dump(exclude_none=True))
        return dims

    def dim(self, name: str) -> int | None:
        """One dimension of the model: the preset with the job's dims, or what the pretrained model's config.json
        calls it. None where the model has none (max_positions of relative-position models such as T5)."""
        if self.pretrained:
            hf_config = self.pretrained_config() or {}
            return next((hf_config[key] for key in HF_DIM_KEYS[name] if hf_config.get(key)), None)
        return self.dims_resolved().get(name)


# --- data --------------------------------------------------------------------------------------------


class TokenizerConfig(Section):
    path: PathText | None = Field(None, description="Local tokenizer: a Hugging Face tokenizer directory or tokenizer.json.")
    train: Literal["bpe", "wordpiece"] = Field("bpe", description="Without path: algorithm to train on the corpus.")
    vocab_size: Int = Field(8192, ge=256, le=MAX_VOCAB, description="Without path: vocabulary size to train.")
    sample_texts: Int = Field(
        200_000,
        gt=0,
        description="Without path: about how many texts the tokenizer trains on, drawn evenly from the whole corpus "
        "by a hash of each row's place (all of them in a smaller corpus), so its training costs the same for any corpus size.",
    )

    @model_validator(mode="after")
    def _path_or_train(self):
        if self.path and (clash := self.changed_from_default("train", "vocab_size", "sample_texts")):
            raise ValueError(f"{clash[0]}: only used when training a tokenizer; remove it or remove path")
        return self


class NearDedupConfig(Section):
    """MinHash LSH over word shingles: texts whose estimated Jaccard similarity reaches `threshold` are
    near-duplicates, and all but the first of them are dropped. 0.8 catches reformatted copies and small edits
    while keeping texts that merely share phrases (the datasketch and dedup literature default)."""

    threshold: Real = Field(0.8, gt=0, lt=1, description="Jaccard similarity at which two texts are near-duplicates.")
    num_perm: Int = Field(128, ge=16, le=1024, description="MinHash permutations (more: a finer similarity estimate).")
    shingle_words: Int = Field(3, gt=0, le=1024, description="Words per shingle (the units whose overlap is measured).")


class CleanConfig(Section):
    """Cleaning stages, each optional, run in this order: normalize, empty (always), length_chars, labels,
    dedup_exact, dedup_near, then length_tokens once the tokenizer exists. Every dropped row goes to the
    quarantine file with its stage and reason."""

    normalize: bool = Field(False, description="NFKC Unicode normalization, control characters removed, spaces and blank lines collapsed.")
    min_chars: Int | None = Field(None, gt=0, le=MAX_TEXT_LENGTH, description="Drop texts shorter than this many characters.")
    max_chars: Int | None = Field(None, gt=0, le=MAX_TEXT_LENGTH, description="Drop texts longer than this many characters.")
    min_tokens: Int | None = Field(None, gt=0, le=MAX_TEXT_LENGTH, description="Drop texts of fewer tokens than this.")
    max_tokens: Int | None = Field(None, gt=0, le=MAX_TEXT_LENGTH, description="Drop texts of more tokens than this.")
    check_labels: bool = Field(True, description="Labelled data: drop unknown labels (see data.labels) and texts given conflicting labels.")
    dedup_exact: bool = Field(False, description="Drop exact repeats of a text (after normalization), keeping the first.")
    dedup_near: NearDedupConfig | None = Field(None, description="Drop near-duplicates (MinHash LSH); null: off.")

    @model_validator(mode="after")
    def _ranges(self):
        for low, high in (("min_chars", "max_chars"), ("min_tokens", "max_tokens")):
            if getattr(self, low) and getattr(self, high) and getattr(self, low) > getattr(self, high):
                raise ValueError(f"{low}: exceeds {high}")
        return self


class AugmentConfig(Section):
    """Classification only: noisy copies of training texts (never of validation texts), seeded."""

    copies: Int = Field(0, ge=0, le=16, description="Augmented copies added per training text; 0 turns it off.")
    word_dropout: Real = Field(0.1, ge=0, lt=1, description="Probability of deleting each word.")
    word_swap: Real = Field(0.1, ge=0, le=1, description="Probability of swapping each word with its neighbour.")
    char_noise: Real = Field(0.02, ge=0, lt=1, description="Probability of replacing each letter with a random one.")
    seed: Seed = Field(0, description="Seed of the augmentation's random choices.")


class DataConfig(Section):
    paths: list[PathText] = Field(
        min_length=1,
        description="Local files or globs (jsonl, json, parquet, csv, txt); ~ and $VARS are expanded. Nothing under "
        "/proc, /sys or /dev, and no recursive ** from the filesystem root (it would walk every mounted disk).",
    )
    format: Literal["auto", "jsonl", "json", "parquet", "csv", "txt"] = Field("auto", description="File format; auto infers it from the extension.")
    text_field: str = Field("text", description="Column holding the text (seq2seq: the source; sft: the prompt; txt files: each line is a row).")
    label_field: str | None = Field(None, description="sequence_classification: column holding the label.")
    labels: list[str] | None = Field(None, min_length=2, description="sequence_classification: the known labels; default: those found in the data.")
    target_field: str | None = Field(
        None, description="seq2seq: column holding the target text (text_field: the source). sft: column holding the response (text_field: the prompt)."
    )
    messages_field: str | None = Field(
        None,
        description="sft: column holding a chat, a list of {role, content} messages (JSON, or a JSON string), instead "
        "of text_field and target_field; the assistant messages are the responses.",
    )
    chat_template: Annotated[str, AfterValidator(_jinja_template)] | None = Field(
        None,
        description="sft: Jinja chat template (Hugging Face's format) that renders each record; default: the "
        "tokenizer's own (tokenizer_config.json of data.tokenizer.path), else prompt, newline, response, end-of-text token.",
    )
    train_on_inputs: bool = Field(False, description="sft: train on the prompt tokens too, not only on the responses (eval/loss is always the responses').")
    packing: bool = Field(
        True,
        description="sft: place whole training examples back to back in rows of seq_len tokens, each attending only to "
        "itself; false: one example per row, padded. Validation rows always hold one example.",
    )
    question_field: str | None = Field(None, description="question_answering: column holding the question (text_field: the context).")
    answer_field: str | None = Field(None, description="question_answering: column holding the answer, a span of the context.")
    answer_start_field: str | None = Field(
        None,
        description="question_answering: column holding the answer's character offset in the context; where the answer "
        "occurs more than once, the occurrence nearest to it is the answer (default: the first).",
    )
    strict: bool = Field(False, description="Malformed lines, undecodable bytes and rows missing a field are errors, not quarantined.")
    clean: CleanConfig = CleanConfig()
    augment: AugmentConfig = AugmentConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    seq_len: Int = Field(128, ge=8, le=MAX_SEQ_LEN, description="Tokens per training sequence (packed, or padded and truncated).")
    val_fraction: Real = Field(0.05, ge=0, lt=0.5, description="Share of documents held out for evaluation.")
    seed: Seed = Field(0, description="Seed of the train/val split and of the shuffle.")
    cache: bool = Field(True, description="Reuse the prepared dataset of an earlier run with the same inputs and settings.")
    cache_dir: PathText = Field(
        "~/.cache/orchestrator/datasets",
        description="Where prepared datasets and tokenizers are kept, and where the workers read them (with cache: "
        "false, a run's own, removed when it ends); a directory every node sees on a multi-node cluster "
        "($ORCHESTRATOR_SHARED_STORAGE/datasets when that is set). Its nearest existing directory must be writable "
        "(checked when the job is loaded; nothing is created then).",
    )


# data keys that only some tasks read (models/tasks.py): a job of another task must leave them at their defaults
TASK_DATA_KEYS = sorted({name for task in TASKS.values() for name in (*task.needs_fields, *task.needs_one_of, *task.data_options)})


# --- train -------------------------------------------------------------------------------------------


Beta = Annotated[Real, Field(ge=0, lt=1)]


class OptimizerConfig(Section):
    name: Literal["adamw", "adam", "sgd"] = Field("adamw", description="Optimizer (registry: train/optimizers.py).")
    lr: Real = Field(3e-4, gt=0, le=MAX_LR, description="Peak learning rate.")
    betas: tuple[Beta, Beta] = Field((0.9, 0.999), description="adam and adamw only.")
    eps: Real = Field(1e-8, gt=0, le=MAX_EPS, description="adam and adamw only.")
    weight_decay: Real = Field(0.0, ge=0, le=MAX_WEIGHT_DECAY, description="Decoupled for adamw, L2 for adam and sgd.")
    momentum: Real = Field(0.0, ge=0, lt=1, description="sgd only.")

    @model_validator(mode="after")
    def _only_own_params(self):
        foreign = ("momentum",) if self.name != "sgd" else ("betas", "eps")
        if clash := self.changed_from_default(*foreign):
            raise ValueError(f"{clash[0]}: not a parameter of {self.name}")
        return self


class _Schedule(Section):
    warmup_steps: Int = Field(0, ge=0, le=MAX_STEPS, description="Steps of linear warmup from 0 to the peak learning rate.")


class ConstantSchedule(_Schedule):
    name: Literal["constant"]


class LinearSchedule(_Schedule):
    """Linear decay from the peak to 0 at the last step."""

    name: Literal["linear"]


class CosineSchedule(_Schedule):
    """Half a cosine from the peak down to min_lr_ratio x peak at the last step."""

    name: Literal["cosine"]
    min_lr_ratio: Real = Field(0.0, ge=0, le=1, description="Floor of the decay, as a share of the peak.")


class CosineWithRestartsSchedule(_Schedule):
    """Cosine decay to 0, restarted num_cycles times (hard restarts)."""

    name: Literal["cosine_with_restarts"]
    num_cycles: Int = Field(2, gt=0, le=MAX_STEPS, description="Cosine cycles, each restarting at the peak.")


class ExponentialSchedule(_Schedule):
    """lr = peak x gamma ** (step - warmup_steps) after warmup."""

    name: Literal["exponential"]
    gamma: Real = Field(0.999, gt=0, le=1, description="Factor applied to the learning rate at every step.")


class PolynomialSchedule(_Schedule):
    """(peak - lr_end) x (1 - progress) ** power + lr_end after warmup."""

    name: Literal["polynomial"]
    power: Real = Field(1.0, gt=0, le=100, description="Exponent of the decay (1: linear).")
    lr_end: Real = Field(1e-7, ge=0, le=MAX_LR, description="Learning rate at the last step.")


ScheduleConfig = Annotated[
    ConstantSchedule | LinearSchedule | CosineSchedule | CosineWithRestartsSchedule | ExponentialSchedule | PolynomialSchedule,
    Field(discriminator="name"),
]
SCHEDULE_CLASSES = {get_args(cls.model_fields["name"].annotation)[0]: cls for cls in get_args(get_args(ScheduleConfig)[0])}
SCHEDULE_NAMES = list(SCHEDULE_CLASSES)


class TrainConfig(Section):
    max_steps: Int | None = Field(None, gt=0, le=MAX_STEPS, description="Optimizer steps to train; or set epochs.")
    epochs: Real | None = Field(None, gt=0, le=MAX_EPOCHS, description="Passes over the training split; or set max_steps.")
    micro_batch_size: Int = Field(8, gt=0, le=MAX_BATCH, description="Sequences per worker per forward pass.")
    grad_accum_steps: Int = Field(1, gt=0, le=MAX_BATCH, description="Micro batches accumulated per optimizer step.")
    lr: Real | None = Field(None, gt=0, le=MAX_LR, description="Shortcut for optimizer.lr.")
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ConstantSchedule(name="constant")
    grad_clip: Real = Field(1.0, ge=0, le=MAX_GRAD_CLIP, description="Global gradient-norm clipping; 0 disables it.")
    eval_every: Int | None = Field(100, gt=0, le=MAX_STEPS, description="Evaluate every N optimizer steps (and at the end).")
    eval_batches: Int | None = Field(None, gt=0, le=MAX_STEPS, description="Cap on validation batches per evaluation.")
    eval_at_start: bool = Field(False, description="Also evaluate before the first step: the untrained baseline.")
    log_every: Int = Field(10, gt=0, le=MAX_STEPS, description="Log a progress line and metrics every N optimizer steps.")
    seed: Seed = Field(0, description="Seed of model initialisation and dropout.")
    activation_checkpointing: bool = Field(
        False,
        description="Keep only each transformer layer's input for the backward pass and recompute the rest: less "
        "activation memory per worker for about a third more compute.",
    )

    @model_validator(mode="after")
    def _length_and_lr(self):
        if (self.max_steps is None) == (self.epochs is None):
            raise ValueError("max_steps: set exactly one of max_steps and epochs")
        if self.lr is not None:
            if "lr" in self.optimizer.model_fields_set and self.optimizer.lr != self.lr:
                raise ValueError("lr: set train.lr or train.optimizer.lr, not both")
            self.optimizer.lr = self.lr
        if self.max_steps is not None and self.schedule.warmup_steps > self.max_steps:
            raise ValueError(f"schedule.warmup_steps: {self.schedule.warmup_steps} exceeds max_steps ({self.max_steps})")
        if isinstance(self.schedule, PolynomialSchedule) and self.schedule.lr_end >= self.optimizer.lr:
            raise ValueError(f"schedule.lr_end: must be below the learning rate ({self.optimizer.lr})")
        return self


# --- deepspeed, scaling, checkpoint, tracking --------------------------------------------------------


class DeepSpeedConfig(Section):
    zero_stage: Literal[0, 1, 2, 3] = Field(0, description="ZeRO stage: 0 (off), 1, 2 or 3.")
    offload_optimizer: bool = Field(False, description="Keep optimizer states in CPU memory (ZeRO 1-3).")
    offload_params: bool = Field(False, description="Keep parameters in CPU memory (ZeRO 3 only).")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="Training precision; fp16 needs a GPU.")
    extra: dict[str, Any] = Field(
        default_factory=dict,
        description="Raw DeepSpeed config keys, deep-merged last over the derived config: they may add keys, not change "
        "one the job sets (ZeRO stage, batch sizes, precision, gradient clipping, optimizer type and lr).",
    )

    @model_validator(mode="after")
    def _offload_needs_zero(self):
        if self.offload_params and self.zero_stage != 3:
            raise ValueError(f"offload_params: needs zero_stage 3 (got {self.zero_stage})")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer: needs zero_stage 1, 2 or 3 (got 0)")
        return self


class ScalingConfig(Section):
    num_workers: Int = Field(2, gt=0, le=MAX_WORKERS, description="Ray Train workers: data x tensor x pipeline ranks (see parallelism); the most, if elastic.")
    min_workers: Int | None = Field(
        None,
        gt=0,
        le=MAX_WORKERS,
        description="Elastic: go on with as few as this many workers when some are lost, instead of waiting for all "
        "(ZeRO stage 0; the global batch stays the same, by accumulating more micro batches per worker).",
    )
    use_gpu: bool = Field(False, description="One GPU per worker, and the nccl backend.")
    placement: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK",
        description="How Ray places the workers on nodes (its placement group strategy): PACK fills nodes in turn, "
        "keeping all-reduces local; SPREAD one per node where it can; STRICT_* or not at all.",
    )
    cpus_per_worker: Real = Field(1.0, gt=0, le=MAX_CPUS_PER_WORKER, description="CPUs Ray reserves for each worker.")


class ParallelismConfig(Section):
    """How the workers share the model: data x tensor x pipeline = scaling.num_workers. Workers of one tensor- or
    pipeline-parallel group train on the same batch; the global batch is counted over the data-parallel replicas."""

    data: Int | None = Field(
        None, gt=0, le=MAX_WORKERS, description="Data-parallel replicas (ZeRO shards over these); default: scaling.num_workers / (tensor x pipeline)."
    )
    tensor: Int = Field(
        1,
        gt=0,
        le=MAX_WORKERS,
        description="Tensor-parallel degree: each linear layer split over this many workers (DeepSpeed AutoTP; llama causal LMs, ZeRO stage 0-2).",
    )
    pipeline: Int = Field(
        1,
        gt=0,
        le=MAX_WORKERS,
        description="Pipeline stages the layers are partitioned over (DeepSpeed PipelineModule; gpt2 causal LMs, "
        "ZeRO stage 0-1); train.grad_accum_steps micro batches flow through them per step.",
    )

    @property
    def layout(self) -> str:
        """Which way the model is split (a key of train.parallel.LAYOUTS)."""
        return "tensor" if self.tensor > 1 else "pipeline" if self.pipeline > 1 else "data"

    @property
    def highest_zero_stage(self) -> int:
        """DeepSpeed: ZeRO-3 would shard again what AutoTP splits; pipelines take ZeRO-1 at most."""
        return {"data": 3, "tensor": 2, "pipeline": 1}[self.layout]


class CheckpointConfig(Section):
    every_steps: Int | None = Field(100, gt=0, le=MAX_STEPS, description="Checkpoint every N optimizer steps (and at the end).")
    keep: Int = Field(2, gt=0, le=MAX_CHECKPOINTS_KEPT, description="Checkpoints kept; older ones are deleted.")
    max_failures: Int = Field(2, ge=-1, le=MAX_RESTARTS, description="Worker-group restarts from the latest checkpoint before the job fails (-1: no limit).")
    dir: PathText = Field(
        "~/orchestrator/runs",
        description="Run storage: a local path or a pyarrow URI; storage every node sees on a multi-node cluster "
        "($ORCHESTRATOR_SHARED_STORAGE/runs when that is set). A local path's nearest existing directory must be "
        "writable (checked when the job is loaded; nothing is created then).",
    )


class TrackingConfig(Section):
    uri: PathText | None = Field(None, description="MLflow tracking URI; default $MLFLOW_TRACKING_URI, else ./mlflow.db.")
    experiment: Name = Field("orchestrator", description="MLflow experiment of the run.")
    run_name: Name | None = Field(None, description="Names the run; a job submitted again with the same run_name resumes it.")
    tags: dict[str, str] = Field(default_factory=dict, description="Tags added to the run's own (task, model, ZeRO stage...).")
    registered_model: Name | None = Field(
        None,
        description="Model Registry name the final model is registered under, a new version per run; default: "
        "tracking.run_name, else the job file's name. A sweep registers its best trial's model under the sweep's name.",
    )
    system_metrics_every_s: Real = Field(10.0, ge=MIN_SAMPLING_S, le=MAX_SECONDS, description="Sampling interval of CPU/memory/GPU metrics.")

    @model_validator(mode="after")
    def _tags_mlflow_takes(self):
        if problem := tag_problem(self.tags):
            raise ValueError(f"tags: {problem}")
        return self


class JobConfig(Section):
    """A training job: everything `orchestrator train` needs, in one YAML file."""

    task: Literal[tuple(TASKS)] = Field("causal_lm", description="What the model learns (a key of models.tasks).")
    model: ModelConfig = ModelConfig()
    data: DataConfig
    train: TrainConfig
    deepspeed: DeepSpeedConfig = DeepSpeedConfig()
    scaling: ScalingConfig = ScalingConfig()
    parallelism: ParallelismConfig = ParallelismConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _fits_together(self):
        if self.deepspeed.precision == "fp16" and not self.scaling.use_gpu:
            raise ValueError("deepspeed.precision: fp16 needs a GPU (scaling.use_gpu: true); use bf16 or fp32 on CPU")
        positions = self.model.dim("max_positions")
        if positions and self.data.seq_len > positions:
            raise ValueError(f"data.seq_len: {self.data.seq_len} exceeds the model's {positions} positions (model.dims.max_positions)")
        task = TASKS[self.task]
        if self.model.pretrained:
            self._check_pretrained(task)
        elif self.model.family not in task.families:
            raise ValueError(f"model.family: {self.task} trains {', '.join(task.families)} models (got {self.model.family!r})")
        for name in task.needs_fields:
            if getattr(self.data, name) is None:
                raise ValueError(f"data.{name}: the {self.task} task needs it")
        if task.needs_one_of and len(given := [name for name in task.needs_one_of if getattr(self.data, name) is not None]) != 1:
            raise ValueError(f"data.{(given[1:] or task.needs_one_of)[0]}: the {self.task} task needs exactly one of {' or '.join(task.needs_one_of)}")
        used = {*task.needs_fields, *task.needs_one_of, *task.data_options}
        if unused := [name for name in self.data.changed_from_default(*TASK_DATA_KEYS) if name not in used]:
            raise ValueError(f"data.{unused[0]}: not used by the {self.task} task")
        if self.data.augment.copies and self.task != "sequence_classification":
            raise ValueError("data.augment.copies: augmentation is for sequence_classification")
        split, data, workers = self.parallelism, self.data_parallel_size, self.scaling.num_workers
        if data * split.tensor * split.pipeline != workers:
            raise ValueError(
                f"parallelism: data x tensor x pipeline = {data} x {split.tensor} x {split.pipeline} = "
                f"{data * split.tensor * split.pipeline} workers, but scaling.num_workers is {workers}"
            )
        if self.scaling.min_workers:
            self._check_elastic()
        if self.parallelism.layout != "data":
            self._check_model_parallel()
        # Imported here: the derived DeepSpeed config is built from this module's classes.
        from orchestrator.train.deepspeed_config import extra_conflict

        if conflict := extra_conflict(self):
            raise ValueError(conflict)
        return self

    def _check_pretrained(self, task) -> None:
        """The task's auto class builds the model's architecture; the model reads its own tokenizer's ids unless the
        job names or trains another."""
        model_type, directory = self.model.family, Path(self.model.pretrained).expanduser()
        if model_type and model_type not in buildable_model_types(task.auto_class):
            raise ValueError(f"model.pretrained: {task.auto_class} cannot build a {model_type} model (config.json model_type), which {self.task} needs")
        tokenizer = self.data.tokenizer
        own_tokenizer = any((directory / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))
        if own_tokenizer and not tokenizer.path and not tokenizer.changed_from_default("train", "vocab_size", "sample_texts"):
            tokenizer.path = self.model.pretrained

    def _check_model_parallel(self) -> None:
        split = self.parallelism
        if split.tensor > 1 and split.pipeline > 1:
            raise ValueError(
                "parallelism: tensor and pipeline parallelism together are not supported (DeepSpeed's AutoTP does not "
                "combine with its PipelineModule); pick one"
            )
        kind, degree = split.layout, max(split.tensor, split.pipeline)
        if self.model.lora:
            raise ValueError(f"model.lora: adapters train data-parallel (ZeRO 0-3); {kind} parallelism would split the layers peft wraps")
        family = FAMILIES.get(self.model.family)
        if self.task != "causal_lm":
            raise ValueError(f"parallelism.{kind}: model parallelism trains causal_lm models (task is {self.task})")
        if family is None or kind not in family.model_parallel:
            able = [name for name, other in FAMILIES.items() if kind in other.model_parallel]
            raise ValueError(f"parallelism.{kind}: splits {', '.join(able)} models, not {self.model.family}")
        if self.deepspeed.zero_stage > split.highest_zero_stage:
            raise ValueError(f"deepspeed.zero_stage: {kind} parallelism works with ZeRO stage 0-{split.highest_zero_stage} (got {self.deepspeed.zero_stage})")
        if self.scaling.min_workers:
            raise ValueError(f"scaling.min_workers: a {kind}-parallel job cannot be elastic (its groups need every worker)")
        if self.model.pretrained:
            return
        dims = self.model.dims_resolved()
        if kind == "tensor":
            for name in ("heads", "kv_heads", "ffn"):
                if dims.get(name) and dims[name] % degree:
                    raise ValueError(f"parallelism.tensor: model {name} ({dims[name]}) must divide by {degree}")
        elif dims["layers"] < degree:
            raise ValueError(f"parallelism.pipeline: {degree} stages need at least as many layers (the model has {dims['layers']})")

    def _check_elastic(self) -> None:
        low, high = self.scaling.min_workers, self.scaling.num_workers
        if low > high:
            raise ValueError(f"scaling.min_workers: {low} is more than scaling.num_workers ({high})")
        if self.deepspeed.zero_stage != 0:
            raise ValueError("scaling.min_workers: elastic jobs need deepspeed.zero_stage 0 (ZeRO shards are per worker count)")
        if not self.checkpoint.every_steps:
            raise ValueError("scaling.min_workers: an elastic job resumes from checkpoints; set checkpoint.every_steps")
        if self.scaling.placement == "STRICT_SPREAD":
            # Ray Train sizes an elastic group by free CPUs alone: it would retry forever a size no set of nodes fits
            raise ValueError("scaling.placement: STRICT_SPREAD cannot be elastic (scaling.min_workers); use SPREAD")
        micro_batches = self.train.grad_accum_steps * high  # per optimizer step, shared by the workers there are
        uneven = [count for count in range(low, high + 1) if micro_batches % count]
        if uneven:
            raise ValueError(
                f"scaling.min_workers: {micro_batches} micro batches per step (train.grad_accum_steps x num_workers) "
                f"cannot be shared evenly by {uneven[0]} workers; raise train.grad_accum_steps"
            )

    @property
    def global_batch_size(self) -> int:
        """Sequences per optimizer step over all data-parallel replicas; the same however many workers an elastic job
        runs on."""
        return self.train.micro_batch_size * self.train.grad_accum_steps * self.data_parallel_size

    @property
    def data_parallel_size(self) -> int:
        """Replicas that train on different data: the workers, unless tensor or pipeline parallelism groups them."""
        split = self.parallelism
        return split.data or self.scaling.num_workers // (split.tensor * split.pipeline)
