"""Issue 18, hostile job and sweep files: each class of input is refused by one rule, with one line naming the
field, in-process and in milliseconds (YAML 1.2 core schema, bounded numbers, paths, cross-field checks, output
directories without side effects, secrets and long values in errors)."""

import copy
import json
import os
import time
from pathlib import Path

import pytest
import yaml
from helpers import tiny_job, write_job, write_sweep

from orchestrator.config import UserError, load_job
from orchestrator.config.load import MAX_ECHO_CHARS, MAX_YAML_DEPTH, apply_overrides, load_sweep, parse_yaml, read_yaml, set_key, validate
from orchestrator.data.checks import checked_job


def refused(raw: dict, *overrides: str) -> str:
    """The error of validating `raw` with `overrides` (dotted.key=YAML value) applied."""
    with pytest.raises(UserError) as caught:
        validate(apply_overrides(copy.deepcopy(raw), list(overrides)))
    return str(caught.value)


@pytest.fixture
def job(corpus) -> dict:
    return tiny_job(corpus)


# --- 1. YAML 1.2 core schema ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["yes", "no", "on", "off", "y", "12:30", "0123", "1_000", "2001-01-01"])
def test_yaml_1_1_booleans_sexagesimals_and_leading_zeros_stay_text(text):
    assert parse_yaml(f"a: {text}") == {"a": text}


@pytest.mark.parametrize(
    "text, value",
    [
        ("true", True),
        ("FALSE", False),
        ("~", None),
        ("null", None),
        ("12", 12),
        ("-3", -3),
        ("0o17", 15),
        ("0x1f", 31),
        ("1e5", 1e5),
        ("0.5", 0.5),
        (".5", 0.5),
        ("-.inf", float("-inf")),
    ],
)
def test_yaml_1_2_core_values(text, value):
    assert parse_yaml(f"a: {text}") == {"a": value}


@pytest.mark.parametrize("text", ["yes", "12:30", "0123", "true"])
def test_yaml_1_1_numbers_fail_an_integer_field_by_type(job, text):
    assert refused(job, f"train.max_steps={text}").startswith("train.max_steps: must be a valid integer (got ")


def test_deep_nesting_is_one_line_not_a_recursion_error(tmp_path):
    with pytest.raises(UserError, match=f"line 65: nested deeper than {MAX_YAML_DEPTH} levels"):
        parse_yaml("a:\n" + "".join(" " * depth + "b:\n" for depth in range(1, 200)))
    with pytest.raises(UserError, match=f"line 1: nested deeper than {MAX_YAML_DEPTH} levels"):  # libyaml's own limit
        parse_yaml("a: " + "[" * 10_000 + "]" * 10_000)
    chained = "a0: &a0 [1]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 200))  # deep through aliases
    with pytest.raises(UserError, match="nested deeper than"):
        parse_yaml(chained)
    with pytest.raises(UserError, match="nested deeper than"):
        set_key({}, "a" + ".a" * 100, 1)


def test_undecodable_bytes_of_a_command_line_are_one_line(job):
    undecodable = b"\xff\xfe".decode("utf-8", "surrogateescape")  # how Python hands such an argument over
    assert refused(job, f"model.size={undecodable}") == "--set model.size: not UTF-8 text (character 1)"


@pytest.mark.parametrize("text", ["? [a, b]\n: 1", "? {a: 1}\n: 1"])
def test_a_complex_mapping_key_is_refused(text):
    with pytest.raises(UserError, match="line 1: a key must be a plain value"):
        parse_yaml(text)


@pytest.mark.parametrize(
    "tag",
    [
        "!!python/object/apply:os.system ['true']",
        "!!python/name:os.system",
        "!!binary aGk=",
        "!!timestamp 2001-01-01",
        "!!int abc",
        "!!bool maybe",
        "!!float x",
        "!!set {a: null}",
    ],
)
def test_tags_outside_the_core_schema_are_refused(tag):
    with pytest.raises(UserError, match="not valid YAML"):
        parse_yaml(f"a: {tag}")


def test_duplicate_keys_are_still_refused():
    with pytest.raises(UserError, match="line 2: duplicate key 'a'"):
        parse_yaml("a: 1\na: 2")


@pytest.mark.parametrize("value", ["[1", "\tx", "!!python/object:os.system", "!!binary aGk=", "a\x00b", "{a: [1}"])
def test_set_values_that_do_not_parse_are_one_line(value):
    with pytest.raises(UserError) as caught:
        apply_overrides({}, [f"train.max_steps={value}"])
    message = str(caught.value)
    assert message.startswith("--set train.max_steps: not valid YAML") and "\n" not in message and "\x00" not in message


@pytest.mark.parametrize("name", ["job\x00.yaml", "job\n.yaml", "job\x1b[2J.yaml"])
def test_control_characters_in_the_file_path_are_refused(name):
    with pytest.raises(UserError, match="a file path cannot hold control characters") as caught:
        read_yaml(name)
    assert not any(char in str(caught.value) for char in "\x00\n\x1b")


# --- 2. numbers have real bounds ---------------------------------------------------------------------------------

INTEGER_FIELDS = [
    "train.max_steps",
    "train.micro_batch_size",
    "train.grad_accum_steps",
    "train.eval_every",
    "train.eval_batches",
    "train.log_every",
    "train.seed",
    "train.schedule.warmup_steps",
    "model.dims.hidden",
    "model.dims.layers",
    "model.dims.heads",
    "model.dims.ffn",
    "model.dims.max_positions",
    "data.seq_len",
    "data.seed",
    "data.tokenizer.vocab_size",
    "data.clean.max_chars",
    "data.augment.seed",
    "scaling.num_workers",
    "parallelism.tensor",
    "checkpoint.every_steps",
    "checkpoint.keep",
    "checkpoint.max_failures",
]


@pytest.mark.parametrize("field", INTEGER_FIELDS)
def test_integers_past_what_the_machine_takes_are_refused(job, field):
    assert refused(job, f"{field}={2**70}").startswith(f"{field}: must be less than or equal to ")


@pytest.mark.parametrize("field", ["train.max_steps", "scaling.num_workers", "data.seed", "checkpoint.keep"])
def test_booleans_are_not_integers(job, field):
    assert refused(job, f"{field}=true").startswith(f"{field}: must be a valid integer (got True)")


def test_seeds_stay_in_numpy_range(job):
    assert refused(job, "train.seed=-1").startswith("train.seed: must be greater than or equal to 0")
    # data.seed + epoch seeds numpy's shuffle: the bound leaves room below numpy's 2**32 - 1
    assert refused(job, f"data.seed={2**31}").startswith("data.seed: must be less than or equal to 2147483647")
    assert validate(apply_overrides(copy.deepcopy(job), [f"data.seed={2**31 - 1}"])).data.seed == 2**31 - 1


FLOAT_FIELDS = [
    "train.optimizer.lr",
    "train.optimizer.eps",
    "train.optimizer.weight_decay",
    "train.grad_clip",
    "scaling.cpus_per_worker",
    "tracking.system_metrics_every_s",
]


@pytest.mark.parametrize("field", FLOAT_FIELDS + ["train.epochs"])
@pytest.mark.parametrize("value", [".inf", ".nan", "1e308"])
def test_floats_are_finite_and_bounded(job, field, value):
    overrides = ["train.max_steps=null"] if field == "train.epochs" else []
    message = refused(job, *overrides, f"{field}={value}")
    assert message.startswith(f"{field}: must be ") and ("finite" in message or "less than" in message), message


def test_betas_are_bounded_too(job):
    assert refused(job, "train.optimizer.betas=[0.9, 2]").startswith("train.optimizer.betas.1: must be less than 1")


def test_a_quniform_integer_is_still_an_integer(job):
    assert validate(apply_overrides(copy.deepcopy(job), ["train.micro_batch_size=16.0"])).train.micro_batch_size == 16
    assert refused(job, "train.micro_batch_size=16.5").startswith("train.micro_batch_size: must be a valid integer")


def sweep_error(tmp_path: Path, job: dict, **sweep) -> str:
    with pytest.raises(UserError) as caught:
        load_sweep(write_sweep(tmp_path, job, **sweep))
    return str(caught.value)


def test_sweep_bounds(tmp_path, job):
    assert "num_samples: must be less than or equal to 10000" in sweep_error(tmp_path, job, num_samples=1_000_000_000)
    space = {f"train.{key}": {"grid": list(range(1, 101))} for key in ("log_every", "eval_every")}
    assert "num_samples: 40,000 trials (grid points x num_samples); at most 10,000" in sweep_error(tmp_path, job, search_space=space)
    many = {"train.log_every": {"choice": list(range(1, 2002))}}
    assert "search_space.train.log_every.choice: List must have at most 1000 items" in sweep_error(tmp_path, job, search_space=many)
    inf_space = {"train.optimizer.lr": {"loguniform": [1e-4, float("inf")]}}
    assert "search_space.train.optimizer.lr.loguniform.1: must be a finite number" in sweep_error(tmp_path, job, search_space=inf_space)


# --- 3. paths ----------------------------------------------------------------------------------------------------

PATH_FIELDS = ["data.paths", "data.cache_dir", "data.tokenizer.path", "model.pretrained", "checkpoint.dir", "tracking.uri"]


@pytest.mark.parametrize("field", PATH_FIELDS)
def test_control_characters_in_paths_are_refused(job, field):
    raw = copy.deepcopy(job)
    set_key(raw, field, ["data\x00.jsonl"] if field == "data.paths" else "dir\x00name")
    with pytest.raises(UserError) as caught:
        validate(raw)
    assert str(caught.value).startswith(field) and "a path cannot hold control characters" in str(caught.value)
    assert "\x00" not in str(caught.value)


def test_the_sweep_base_refuses_control_characters(tmp_path, job):
    assert "base: a path cannot hold control characters" in sweep_error(tmp_path, job, base="job\x00.yaml")


@pytest.mark.parametrize(
    "pattern, problem",
    [
        ("/**/*.x", "may not start at the filesystem root"),
        ("//*/**/*.x", "may not start at the filesystem root"),
        ("/proc/self/environ", "/proc is a pseudo filesystem"),
        ("/dev/zero", "/dev is a pseudo filesystem"),
        ("/sys/**/*", "/sys is a pseudo filesystem"),
    ],
)
def test_data_globs_may_not_walk_the_whole_filesystem(job, tmp_path, pattern, problem):
    raw = copy.deepcopy(job)
    raw["data"]["paths"] = [pattern]
    started = time.process_time()
    with pytest.raises(UserError, match=f"data.paths\\[0\\]: .*{problem}"):
        checked_job(write_job(tmp_path / "job.yaml", raw))
    assert time.process_time() - started < 1


# --- 4. cross-field checks ---------------------------------------------------------------------------------------


def test_the_data_parallel_degree_is_always_checked(job):
    message = refused(job, "parallelism.data=3")
    assert message == "parallelism: data x tensor x pipeline = 3 x 1 x 1 = 3 workers, but scaling.num_workers is 2"
    assert validate(apply_overrides(copy.deepcopy(job), ["parallelism.data=2"])).data_parallel_size == 2


@pytest.mark.parametrize(
    "extra, expected",
    [
        ("{zero_optimization: {stage: 7}}", "deepspeed.extra.zero_optimization.stage: 7 conflicts with deepspeed.zero_stage (0)"),
        ("{train_micro_batch_size_per_gpu: -1}", "deepspeed.extra.train_micro_batch_size_per_gpu: -1 conflicts with train.micro_batch_size (4)"),
        ("{train_batch_size: -8}", "deepspeed.extra.train_batch_size: -8 conflicts with train.micro_batch_size x grad_accum_steps"),
        ("{bf16: {enabled: true}}", "deepspeed.extra.bf16.enabled: True conflicts with deepspeed.precision ('fp32')"),
        ("{fp16: true}", "deepspeed.extra.fp16: True conflicts with deepspeed.precision ('fp32')"),
        ("{gradient_clipping: 5}", "deepspeed.extra.gradient_clipping: 5 conflicts with train.grad_clip (1.0)"),
    ],
)
def test_deepspeed_extra_may_not_contradict_the_job(job, extra, expected):
    assert refused(job, f"deepspeed.extra={extra}").startswith(expected)


def test_deepspeed_extra_still_adds_keys_and_may_repeat_the_jobs_values(job):
    extra = "{flops_profiler: {enabled: true}, zero_optimization: {stage: 0, reduce_bucket_size: 1000}, gradient_clipping: 1.0}"
    assert validate(apply_overrides(copy.deepcopy(job), [f"deepspeed.extra={extra}"])).deepspeed.extra["flops_profiler"]


# --- 5. output directories: writable, checked without side effects ----------------------------------------------


@pytest.mark.parametrize("field", ["checkpoint.dir", "data.cache_dir"])
def test_an_output_directory_under_a_file_is_refused(job, tmp_path, field):
    afile = tmp_path / "afile"
    afile.write_text("")
    set_key(job, field, str(afile / "runs"))
    with pytest.raises(UserError, match=f"{field}: .* is not writable \\({afile} is not a directory\\)"):
        checked_job(write_job(tmp_path / "job.yaml", job))


def test_an_output_directory_under_proc_is_refused(job, tmp_path):
    set_key(job, "checkpoint.dir", "/proc/runs")
    with pytest.raises(UserError, match="checkpoint.dir: /proc/runs is not writable \\(/proc is a pseudo filesystem\\)"):
        checked_job(write_job(tmp_path / "job.yaml", job))


def test_loading_a_job_creates_nothing_on_disk(job, tmp_path):
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    set_key(job, "data.cache_dir", str(outputs / "not" / "yet" / "cache"))
    set_key(job, "checkpoint.dir", str(outputs / "runs"))
    checked_job(write_job(tmp_path / "job.yaml", job))
    assert list(outputs.iterdir()) == []


def test_a_uri_checkpoint_dir_is_not_probed(job, tmp_path):
    set_key(job, "checkpoint.dir", "s3://bucket/runs")
    assert checked_job(write_job(tmp_path / "job.yaml", job)).checkpoint.dir == "s3://bucket/runs"


# --- 6. secrets and long values in errors ------------------------------------------------------------------------


def test_a_secret_tag_is_not_printed_when_another_field_is_wrong(job):
    raw = copy.deepcopy(job)
    raw["tracking"]["tags"] = {"api_token": "s3cr3t-value-1234"}
    for override in ("tracking.experiment=[1]", "tracking=[1]", "tracking.tags.api_token=[s3cr3t-value-1234]"):
        message = refused(raw, override)
        assert "s3cr3t-value-1234" not in message, message
    raw["tracking"]["system_metrics_every_s"] = "s3cr3t-value-1234"  # the secret somewhere else in the file
    assert "s3cr3t-value-1234" not in refused(raw)


def test_long_values_are_cut_and_answered_fast(job, tmp_path):
    """A 10 MB model.family, a 1 MB unknown key, a 10 MB cache_dir: each one line, cut with a marker, well under 2 s."""
    cases = {
        "model.family": ("x" * 10_000_000, "...[10000002 chars]"),
        "data.cache_dir": ("d" * 10_000_000, "...[10000002 chars]"),
        "train." + "k" * 1_000_000: (1, ""),  # YAML itself limits a key to 1024 characters
    }
    for key, (value, marker) in cases.items():
        raw = copy.deepcopy(job)
        set_key(raw, key, value)
        path = tmp_path / "job.yaml"
        path.write_text(json.dumps(raw))  # JSON is YAML, and much faster to write
        started = time.process_time()
        with pytest.raises(UserError) as caught:
            load_job(path)
        elapsed = time.process_time() - started
        message = str(caught.value)
        assert elapsed < 2 and marker in message and len(message) < 1000 and "\n" not in message, (key[:20], elapsed)
    raw = copy.deepcopy(job)
    raw["train"]["k" * 1_000_000] = 1  # as a --set key can give it
    assert refused(raw).startswith("train." + "k" * MAX_ECHO_CHARS + "...[1000000 chars]: unknown key")


def test_escape_sequences_in_an_unknown_key_are_escaped(job):
    raw = copy.deepcopy(job)
    raw["train"]["\x1b[2J\nfake line"] = 1
    message = refused(raw)
    assert message.startswith("train.\\x1b[2J\\nfake line: unknown key") and "\x1b" not in message


def test_examples_of_the_repository_parse_the_same_in_yaml_1_2():
    """The example jobs and sweeps mean the same under the core schema as under YAML 1.1."""
    repo = Path(__file__).resolve().parents[2]
    for path in [*repo.glob("jobs/*.yaml"), *repo.glob("jobs/sweeps/*.yaml")]:
        assert read_yaml(path) == yaml.safe_load(path.read_text()), path


def test_checking_output_directories_again_and_again_leaves_nothing(job, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    set_key(job, "checkpoint.dir", str(home / "runs"))
    set_key(job, "data.cache_dir", str(home / "cache"))
    for _ in range(3):
        checked_job(write_job(tmp_path / "job.yaml", job))
    assert os.listdir(home) == []


def test_a_job_the_framework_writes_reads_back_unchanged():
    from orchestrator.config.load import dump_yaml, parse_yaml

    tree = {"tracking": {"tags": {"a": "1e5", "b": "0x1f", "c": "yes", "d": "12:30", "e": "null", "f": "plain"}}, "n": 3}
    assert parse_yaml(dump_yaml(tree)) == tree


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model.dims.heads=3"], "model.dims.heads: 3 heads cannot split a hidden width of 64"),
        (["model.family=llama", "model.dims.kv_heads=3"], "model.dims.kv_heads: 3 key/value heads cannot group 2 heads"),
        (["model.dims.layers=1025"], "model.dims.layers: must be less than or equal to 1024"),
    ],
)
def test_model_dimensions_that_build_no_model_are_refused(job, overrides, expected):
    assert refused(job, *overrides).startswith(expected)


def test_t5_heads_need_not_split_the_width(job):
    job = job | {"task": "seq2seq"}
    job["data"] = job["data"] | {"text_field": "text", "target_field": "text"}
    job["model"] = {"family": "t5", "size": "tiny", "dims": {"heads": 3}}
    assert validate(job).model.dims.heads == 3


@pytest.mark.parametrize("field", ["model.pretrained", "data.cache_dir", "checkpoint.dir", "data.tokenizer.path"])
def test_a_path_with_a_name_longer_than_the_file_system_takes_is_refused(job, field):
    """os.stat raises 'File name too long' for these: a validator calling it would end in a traceback."""
    assert refused(job, f"{field}=/tmp/{'a' * 256}/x").startswith(f"{field}: a file or directory name has at most 255 bytes")
