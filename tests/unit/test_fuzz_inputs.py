"""Property-based tests of everything a user feeds `orchestrator` (issue 18): job files, sweep files and `--set`
values generated from the schema, then mutated (types, bounds, YAML 1.1 traps, unicode and escapes, lengths,
nesting, aliases, unknown keys, planted secrets). Each case runs through the real CLI entry point in this process
and must exit 0 or 2 within 2 s, print one line, never a traceback, a control character or a secret, and leave the
file system as it was. The fixed regression cases of the issue, one per failure class, follow, and a few of the
worst cases run as real processes.

Hypothesis profiles: `fuzz` (the default: derandomized, >= 2,000 examples, for CI) and `fuzz-deep` (ten times as
many, random); pick one with ORCHESTRATOR_FUZZ_PROFILE.
"""

import math
import os
from pathlib import Path

import pytest
from fuzz_strategies import (
    HUGE_INT,
    Doc,
    World,
    base_job,
    case_dir,
    check_outcome,
    delete_at,
    job_docs,
    mutated_job_docs,
    mutated_sweep_docs,
    quoted,
    run_case,
    schema_accepts,
    set_at,
    set_overrides,
    sweep_docs,
)
from helpers import REPO, Outcome, cli_process, write_corpus
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.config import UserError
from orchestrator.config.load import read_yaml

EXAMPLES_PER_SHARE = 100
settings.register_profile(
    "fuzz",
    max_examples=EXAMPLES_PER_SHARE,
    derandomize=True,  # the same cases on every CI run
    database=None,  # nothing written into the repository
    deadline=2000,
    # No health check is suppressed: the megabyte strings are built by repetition, not drawn, so generation is fast.
)
settings.register_profile("fuzz-deep", settings.get_profile("fuzz"), max_examples=10 * EXAMPLES_PER_SHARE, derandomize=False)
PROFILE = settings.get_profile(os.environ.get("ORCHESTRATOR_FUZZ_PROFILE", "fuzz"))


def examples(shares: int) -> settings:
    """The profile, with `shares` x its examples: the fast run's total is 21 shares (2,100 cases)."""
    return settings(PROFILE, max_examples=shares * PROFILE.max_examples)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    """A sandbox holding a small corpus, HOME (so ~ and the default caches land inside) and the cwd."""
    root = tmp_path_factory.mktemp("fuzz")
    sandbox = World(root, write_corpus(root / "corpus", documents=50), root / "home", root / "cwd")
    sandbox.home.mkdir()
    sandbox.cwd.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(sandbox.home))
        patch.setenv("XDG_CACHE_HOME", str(sandbox.home / ".cache"))
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        patch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # nothing listens: a command that reaches Ray fails, not a cluster
        patch.delenv("ORCHESTRATOR_SHARED_STORAGE", raising=False)
        patch.chdir(sandbox.cwd)
        yield sandbox


def validate_job(world: World, doc: Doc, *extra: str, **options):
    return run_case(world, {"job.yaml": doc}, "validate", str(case_dir(world) / "job.yaml"), *extra, **options)


# --- generated cases ----------------------------------------------------------------------------------------------


@examples(4)
@given(data=st.data())
def test_generated_jobs_are_valid_exactly_when_the_schema_says_so(world, data):
    doc = data.draw(job_docs(world))
    outcome, created, deleted = validate_job(world, doc)
    check_outcome(outcome, doc.secrets, created, deleted)
    assert outcome.code == (0 if schema_accepts(doc.tree) else 2), str(outcome)


@examples(8)
@given(data=st.data())
def test_mutated_job_files_exit_0_or_2_with_one_clean_line(world, data):
    doc = data.draw(mutated_job_docs(world))
    outcome, created, deleted = validate_job(world, doc)
    check_outcome(outcome, doc.secrets, created, deleted)


@examples(2)
@given(data=st.data())
def test_generated_sweeps_are_valid(world, data):
    sweep, job = data.draw(sweep_docs(world))
    outcome, created, deleted = run_case(world, {"sweep.yaml": sweep, "job.yaml": job}, "validate", str(case_dir(world) / "sweep.yaml"))
    check_outcome(outcome, sweep.secrets | job.secrets, created, deleted)
    assert outcome.code == 0, str(outcome)


@examples(3)
@given(data=st.data())
def test_mutated_sweeps_exit_0_or_2_with_one_clean_line(world, data):
    sweep, job = data.draw(mutated_sweep_docs(world))
    outcome, created, deleted = run_case(world, {"sweep.yaml": sweep, "job.yaml": job}, "validate", str(case_dir(world) / "sweep.yaml"))
    check_outcome(outcome, sweep.secrets | job.secrets, created, deleted)


@examples(4)
@given(data=st.data())
def test_set_overrides_exit_0_or_2_with_one_clean_line(world, data):
    doc = data.draw(job_docs(world, max_changes=1))
    overrides = data.draw(set_overrides(doc))
    outcome, created, deleted = validate_job(world, doc, *(arg for item in overrides for arg in ("--set", item)))
    check_outcome(outcome, doc.secrets, created, deleted)


# --- the fixed regression cases: one or more per failure class of the issue ----------------------------------------


class Raw(str):
    """A value written into the file as raw YAML text (a YAML 1.1 scalar, a tag, a nesting, an escape)."""


DELETE = object()
LONG = 1000
SECRET, OTHER_SECRET = "ZqRegressionSecret1", "ZqRegressionSecret2"


def job_with(world: World, changes: dict[str, object]) -> Doc:
    """The base causal_lm job with dotted keys set (a Raw value as YAML text; DELETE removes the key). Long keys and
    values are written as quoted YAML directly: PyYAML's emitter would take seconds for a megabyte."""
    doc = Doc(base_job("causal_lm", "gpt2", world))
    for key, value in changes.items():
        path = tuple(doc.raw_key(quoted(part)) if len(part) > LONG else part for part in key.split("."))
        if value is DELETE:
            delete_at(doc.tree, path)
        elif isinstance(value, str) and (isinstance(value, Raw) or len(value) > LONG):
            set_at(doc.tree, path, doc.raw_value(value if isinstance(value, Raw) else quoted(value)))
        else:
            set_at(doc.tree, path, value)
    return doc


def sweep_with(changes: dict[str, object]) -> Doc:
    doc = Doc({"base": "job.yaml", "search_space": {"train.optimizer.lr": {"loguniform": [1e-4, 1e-2]}}})
    for key, value in changes.items():
        doc.tree[key] = doc.raw_value(value) if isinstance(value, Raw) else value
    return doc


def huge(key: str) -> pytest.param:
    return pytest.param({key: HUGE_INT}, key, id=f"accepted-broken:2**70-{key}")


def unbounded_float(key: str, value: float) -> pytest.param:
    changes = {key: value} | ({"train.max_steps": DELETE} if key == "train.epochs" else {})
    return pytest.param(changes, key, id=f"accepted-broken:{value}-{key}")


MB = 1_000_000
TEN_MB_SECONDS = 10  # parsing 10 MB of YAML alone takes PyYAML's pure-Python loader about 2.5 s here
# changes to the base job -> what the one error line must name (None: exit 0 or 2; "valid": exit 0)
JOB_REGRESSIONS = [
    # data loss: a run name is a path component under the checkpoint root
    pytest.param({"tracking.run_name": ".."}, "tracking.run_name", id="data-loss:run_name-dotdot"),
    pytest.param({"tracking.run_name": "../../.."}, "tracking.run_name", id="data-loss:run_name-to-root"),
    # hangs: long values reaching an error message or the masking regex; a glob over the whole file system
    pytest.param({"model.family": "a" * MB}, "model.family", id="hang:1MB-family"),
    pytest.param({"train." + "k" * MB: 1}, "train.", id="hang:1MB-unknown-key"),
    pytest.param({"data.cache_dir": "a:" * (MB // 2)}, "data.cache_dir", id="hang:1MB-cache_dir"),
    pytest.param({"data.paths": ["/**/*.x"]}, "data.paths", id="hang:glob-over-root"),
    # tracebacks
    pytest.param({"model.size": Raw("[" * 10_000 + "]" * 10_000)}, None, id="traceback:deep-nesting"),
    pytest.param({"model.size": Raw("{[a, b]: 1}")}, None, id="traceback:complex-key"),
    pytest.param({"data.paths": Raw('["corpus\\0.jsonl"]')}, "data.paths", id="traceback:nul-in-path"),
    # accepted although they cannot work
    *(
        huge(key)
        for key in (
            "train.max_steps",
            "train.micro_batch_size",
            "train.grad_accum_steps",
            "model.dims.hidden",
            "data.seq_len",
            "data.tokenizer.vocab_size",
            "train.seed",
            "data.seed",
            "scaling.num_workers",
            "checkpoint.keep",
            "train.eval_every",
        )
    ),
    *(
        unbounded_float(key, value)
        for value in (math.inf, 1e308)
        for key in (
            "train.optimizer.lr",
            "train.optimizer.eps",
            "train.optimizer.weight_decay",
            "train.grad_clip",
            "train.epochs",
            "scaling.cpus_per_worker",
            "tracking.system_metrics_every_s",
        )
    ),
    pytest.param({"train.max_steps": Raw("yes")}, "train.max_steps", id="accepted-broken:yaml11-yes"),
    pytest.param({"train.max_steps": Raw("12:30")}, "train.max_steps", id="accepted-broken:yaml11-sexagesimal"),
    pytest.param({"parallelism.data": 3, "scaling.num_workers": 2}, "parallelism", id="accepted-broken:data-parallel-3-of-2"),
    pytest.param({"deepspeed.extra": {"zero_optimization": {"stage": 7}}}, "deepspeed.extra", id="accepted-broken:extra-stage-7"),
    pytest.param({"deepspeed.extra": {"train_micro_batch_size_per_gpu": -1}}, "deepspeed.extra", id="accepted-broken:extra-negative-batch"),
    pytest.param({"tracking.run_name": ""}, "tracking.run_name", id="accepted-broken:run_name-empty"),
    pytest.param({"tracking.run_name": "r" * 501}, "tracking.run_name", id="accepted-broken:run_name-501-chars"),
    pytest.param({"tracking.experiment": ""}, "tracking.experiment", id="accepted-broken:experiment-empty"),
    pytest.param({"tracking.registered_model": "a/b"}, "tracking.registered_model", id="accepted-broken:registered_model-slash"),
    pytest.param({"tracking.registered_model": "a:b"}, "tracking.registered_model", id="accepted-broken:registered_model-colon"),
    pytest.param({"checkpoint.dir": "/proc/orchestrator-runs"}, "checkpoint.dir", id="accepted-broken:checkpoint-under-proc"),
    # leaks: each value is quoted by an error, and must be masked there
    pytest.param({"model.size": f"postgresql://svc:{SECRET}@{OTHER_SECRET}@db/x"}, "model.size", id="leak:password-with-at"),
    pytest.param({"model.size": f"https://{SECRET}@github.com/org/repo.git"}, "model.size", id="leak:token-url"),
    pytest.param({"tracking.tags.api_token": SECRET, "model.size": SECRET}, "model.size", id="leak:secret-tag-value-elsewhere"),
    pytest.param({"tracking.tags.api_token": [SECRET]}, "tracking.tags", id="leak:secret-tag-wrong-type"),
    pytest.param({"train.\x1b[2J\nerror: forged line": 1}, "train.", id="leak:escapes-in-unknown-key"),
    # side effects
    pytest.param({"data.cache_dir": "new-cache"}, "valid", id="side-effect:validate-creates-cache_dir"),
]


@pytest.mark.parametrize(("changes", "expected"), JOB_REGRESSIONS)
def test_job_regression(world, changes, expected):
    doc = job_with(world, changes)
    outcome, created, deleted = validate_job(world, doc)
    if expected == "valid":
        assert outcome.code == 0, str(outcome)
    elif expected:
        assert outcome.code == 2 and expected in outcome.stderr, str(outcome)
    check_outcome(outcome, {SECRET, OTHER_SECRET}, created, deleted)


def test_checkpoint_dir_under_a_file_is_refused(world):
    doc = job_with(world, {"checkpoint.dir": str(world.corpus / "runs")})
    outcome, created, deleted = validate_job(world, doc)
    assert outcome.code == 2 and "checkpoint.dir" in outcome.stderr, str(outcome)
    check_outcome(outcome, set(), created, deleted)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        pytest.param({"num_samples": 1_000_000_000}, "num_samples", id="accepted-broken:num_samples-1e9"),
        pytest.param({"search_space": Raw("{train.optimizer.lr: {loguniform: [1.0e-4, .inf]}}")}, "loguniform", id="accepted-broken:loguniform-inf"),
        pytest.param({"name": "../../escape"}, "name", id="data-loss:sweep-name-escapes"),
    ],
)
def test_sweep_regression(world, changes, expected):
    sweep = sweep_with(changes)
    outcome, created, deleted = run_case(world, {"sweep.yaml": sweep, "job.yaml": job_with(world, {})}, "validate", str(case_dir(world) / "sweep.yaml"))
    assert outcome.code == 2 and expected in outcome.stderr, str(outcome)
    check_outcome(outcome, set(), created, deleted)


@pytest.mark.parametrize(
    "override",
    [
        pytest.param("model.family=" + "a" * 100_000, id="hang:100KB-set-value"),
        pytest.param("model.size=[1", id="traceback:set-unclosed-list"),
        pytest.param("model.size=\t", id="traceback:set-tab"),
        pytest.param("model.size=!!python/name:os.system", id="traceback:set-python-tag"),
        pytest.param("model.size={a: *b}", id="traceback:set-undefined-alias"),
        pytest.param("model.size=a\udcffb", id="traceback:set-undecodable-byte"),
        pytest.param(f"model.size=https://{SECRET}@github.com/x", id="leak:set-token-url"),
    ],
)
def test_set_regression(world, override):
    outcome, created, deleted = validate_job(world, job_with(world, {}), "--set", override)
    assert outcome.code == 2 and override.split("=")[0] in outcome.stderr, str(outcome)
    check_outcome(outcome, {SECRET}, created, deleted)


@pytest.mark.parametrize(("text", "not_read_as"), [("yes", True), ("no", False), ("on", True), ("12:30", 750), ("0123", 83)])
def test_yaml_1_1_scalars_are_not_read_as_booleans_or_odd_numbers(tmp_path, text, not_read_as):
    """YAML 1.2 core: `yes` and `12:30` are strings, `0123` is 123 (or refused), never 1.1's True, 750 or 83."""
    path = tmp_path / "job.yaml"
    path.write_text(f"train:\n  max_steps: {text}\n")
    try:
        value = read_yaml(path)["train"]["max_steps"]
    except UserError:
        return
    assert isinstance(value, str) or value != not_read_as, value


def test_ten_megabyte_file_is_refused_in_linear_time(world):
    """The issue's closing figure: the slowest `validate` of a 10 MB file (a 10 MB model.family)."""
    doc = job_with(world, {"model.family": "a" * (10 * MB)})
    outcome, created, deleted = validate_job(world, doc, hard_stop_s=30)
    check_outcome(outcome, set(), created, deleted, seconds=TEN_MB_SECONDS)
    assert outcome.code == 2 and "model.family" in outcome.stderr


# --- the worst cases as real processes: exit code, one stderr line, nothing destroyed --------------------------------


def orchestrator_process(world: World, *args: str | bytes, timeout: float = 60) -> Outcome:
    return cli_process(*args, cwd=world.cwd, env={"PYTHONPATH": str(REPO)}, timeout=timeout)


def assert_one_error_line(result: Outcome, naming: str) -> None:
    stderr = result.stderr
    assert result.code == 2, (result.stdout + result.stderr)[-3000:]
    assert stderr.startswith("error: ") and stderr.count("\n") == 1 and naming in stderr, stderr[-3000:]
    assert not [char for char in stderr[:-1] if char < " " or char == "\x7f"], stderr[:500]


def write_case(world: World, name: str, doc: Doc) -> Path:
    path = world.root / "processes" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(doc.text())
    return path


@pytest.mark.parametrize(
    ("command", "changes", "extra", "naming"),
    [
        pytest.param("validate", {"model.size": Raw("[" * 10_000 + "]" * 10_000)}, [], "validate.yaml", id="traceback:deep-nesting"),
        pytest.param("validate", {"train.\x1b[2J\nerror: forged line": 1}, [], "train.", id="leak:escapes-in-unknown-key"),
        pytest.param("validate", {}, ["--set", b"model.size=\xff\xfe"], "model.size", id="traceback:set-undecodable-bytes"),
        pytest.param("validate", {"model.family": "a" * 10 * MB}, [], "model.family", id="hang:10MB-family"),
        pytest.param("plan", {}, ["--set", f"model.dims.hidden={HUGE_INT}"], "model.dims.hidden", id="traceback:plan-huge-dims"),
    ],
)
def test_worst_cases_in_a_real_process(world, command, changes, extra, naming):
    path = write_case(world, f"{command}.yaml", job_with(world, changes))
    result = orchestrator_process(world, command, str(path), *extra)
    assert_one_error_line(result, naming)
    assert result.cpu_s < TEN_MB_SECONDS


def test_restart_with_a_run_name_out_of_the_checkpoint_root_deletes_nothing(world):
    """`train --restart` deleted `checkpoint.dir/run_name`: with run_name `..`, the checkpoint root's parent."""
    store = world.root / "store"
    (store / "runs" / "another-run").mkdir(parents=True)
    (store / "runs" / "another-run" / "checkpoint").write_text("kept")
    (store / "precious").write_text("kept")
    path = write_case(world, "restart.yaml", job_with(world, {"checkpoint.dir": str(store / "runs"), "tracking.run_name": ".."}))
    result = orchestrator_process(world, "train", str(path), "--restart", timeout=120)
    survivors = [path for path in (store / "precious", store / "runs" / "another-run" / "checkpoint") if path.exists()]
    assert len(survivors) == 2, f"--restart deleted what it did not create: only {survivors} are left"
    assert_one_error_line(result, "tracking.run_name")


def test_sweep_named_out_of_its_directory_is_refused_before_it_starts(world):
    job = write_case(world, "job.yaml", job_with(world, {}))
    sweep = write_case(world, "sweep.yaml", sweep_with({"base": str(job), "name": "../../escape"}))
    assert_one_error_line(orchestrator_process(world, "sweep", str(sweep)), "name")
