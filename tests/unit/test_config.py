"""The job schema: good files load, bad ones fail with one line naming the field."""

import os
import subprocess
import sys

import pytest
import yaml
from helpers import REPO, cli_process, run_cli, tiny_job, write_job

from orchestrator.config import JobConfig, UserError, load_job
from orchestrator.config.job import SCHEDULE_NAMES, ModelConfig, OptimizerConfig
from orchestrator.data.checks import checked_job
from orchestrator.models.families import FAMILIES
from orchestrator.train.optimizers import OPTIMIZERS
from orchestrator.train.schedules import SCHEDULES


def test_example_jobs_validate(corpus, tmp_path):
    for path in (REPO / "jobs").glob("*.yaml"):
        job = yaml.safe_load(path.read_text())
        job["data"]["paths"] = [str(corpus)]  # the examples read an installed corpus
        checked_job(write_job(tmp_path / path.name, job))


def test_defaults_and_shortcuts(corpus, tmp_path):
    job = load_job(write_job(tmp_path / "job.yaml", tiny_job(corpus, train={"max_steps": 5, "lr": 0.01, "optimizer": {"name": "adamw"}})))
    assert job.train.optimizer.lr == 0.01
    assert job.deepspeed.zero_stage == 0 and job.scaling.num_workers == 2
    assert job.model.dim("max_positions") == 64


def test_overrides_are_typed_by_the_schema(corpus, tmp_path):
    path = write_job(tmp_path / "job.yaml", tiny_job(corpus))
    job = load_job(path, ["train.max_steps=50", "deepspeed.zero_stage=3", "train.optimizer.betas=[0.8, 0.9]"])
    assert job.train.max_steps == 50 and job.deepspeed.zero_stage == 3
    assert job.train.optimizer.betas == (0.8, 0.9)


def test_shared_storage_holds_the_checkpoints_and_cache_a_job_file_leaves_unset(corpus, tmp_path, monkeypatch):
    job = tiny_job(corpus)
    job.pop("checkpoint", None)
    job["data"].pop("cache_dir", None)
    path = write_job(tmp_path / "job.yaml", job)
    assert load_job(path).checkpoint.dir == "~/orchestrator/runs"  # unset: the defaults

    monkeypatch.setenv("ORCHESTRATOR_SHARED_STORAGE", str(tmp_path / "shared/"))
    loaded = load_job(path)
    assert (loaded.checkpoint.dir, loaded.data.cache_dir) == (f"{tmp_path}/shared/runs", f"{tmp_path}/shared/datasets")
    assert load_job(path, [f"checkpoint.dir={tmp_path}/mine"]).checkpoint.dir == f"{tmp_path}/mine"  # set: kept


def test_resolved_job_loads_back_unchanged(corpus, tmp_path):
    """The job.yaml artifact in MLflow is the resolved job; a user must be able to run it again."""
    job = load_job(write_job(tmp_path / "job.yaml", tiny_job(corpus, train={"max_steps": 5, "lr": 0.01, "optimizer": {"name": "adamw"}})))
    again = load_job(write_job(tmp_path / "resolved.yaml", job.model_dump(mode="json")))
    assert again == job


BAD_JOBS = [
    ("unknown key", {"train": {"max_steps": 5, "colour": "red"}}, [], "train.colour: unknown key"),
    ("wrong type", {}, ["train.micro_batch_size=many"], "train.micro_batch_size: must be a valid integer"),
    ("zero stage", {}, ["deepspeed.zero_stage=7"], "deepspeed.zero_stage: must be 0, 1, 2 or 3 (got 7)"),
    ("elastic with zero", {}, ["scaling.min_workers=1", "deepspeed.zero_stage=2"], "scaling.min_workers: elastic jobs need deepspeed.zero_stage 0"),
    (
        "elastic uneven",
        {},
        ["scaling.num_workers=3", "scaling.min_workers=2"],
        "3 micro batches per step (train.grad_accum_steps x num_workers) cannot be shared evenly by 2 workers",
    ),
    ("elastic range", {}, ["scaling.min_workers=3"], "scaling.min_workers: 3 is more than scaling.num_workers (2)"),
    ("elastic strict spread", {}, ["scaling.min_workers=1", "scaling.placement=STRICT_SPREAD"], "scaling.placement: STRICT_SPREAD cannot be elastic"),
    ("seq_len", {}, ["data.seq_len=128"], "data.seq_len: 128 exceeds the model's 64 positions"),
    ("fp16 on cpu", {}, ["deepspeed.precision=fp16"], "deepspeed.precision: fp16 needs a GPU"),
    ("offload", {}, ["deepspeed.offload_params=true"], "deepspeed.offload_params: needs zero_stage 3"),
    ("steps", {}, ["train.epochs=2"], "train.max_steps: set exactly one of max_steps and epochs"),
    ("lr twice", {}, ["train.lr=0.1"], "train.lr: set train.lr or train.optimizer.lr, not both"),
    ("momentum", {}, ["train.optimizer.momentum=0.9"], "train.optimizer.momentum: not a parameter of adamw"),
    ("schedule", {}, ["train.schedule.gamma=0.9"], "train.schedule.gamma: unknown key"),
    ("schedule name", {}, ["train.schedule.name=step"], "train.schedule.name: must be one of 'constant'"),
    ("size", {}, ["model.size=huge"], "model.size: gpt2 has sizes tiny, small, medium (got 'huge')"),
    ("family", {}, ["model.family=gpt3"], "model.family: a random-init model is one of gpt2, llama, bert, t5 (got 'gpt3')"),
    ("family_of_task", {}, ["model.family=bert"], "model.family: causal_lm trains gpt2, llama models (got 'bert')"),
    ("task_needs_label", {}, ["task=sequence_classification", "model.family=bert"], "data.label_field: the sequence_classification task needs it"),
    ("field_of_other_task", {}, ["data.target_field=fr"], "data.target_field: not used by the causal_lm task"),
    ("augment_needs_classification", {}, ["data.augment.copies=2"], "data.augment.copies: augmentation is for sequence_classification"),
    ("clean_range", {}, ["data.clean.min_chars=50", "data.clean.max_chars=10"], "data.clean.min_chars: exceeds max_chars"),
    ("missing file", {}, ["data.paths=[/no/such/*.jsonl]"], "data.paths[0]: no file matches '/no/such/*.jsonl'"),
    ("bad override", {}, ["train.max_steps"], "--set train.max_steps: expected dotted.key=value"),
    (
        "parallel arithmetic",
        {},
        ["parallelism.pipeline=2", "parallelism.data=2"],
        "parallelism: data x tensor x pipeline = 2 x 1 x 2 = 4 workers, but scaling.num_workers is 2",
    ),
    (
        "parallel remainder",
        {},
        ["parallelism.pipeline=2", "scaling.num_workers=3"],
        "parallelism: data x tensor x pipeline = 1 x 1 x 2 = 2 workers, but scaling.num_workers is 3",
    ),
    (
        "tensor and pipeline",
        {},
        ["parallelism.tensor=2", "parallelism.pipeline=2", "scaling.num_workers=4"],
        "parallelism: tensor and pipeline parallelism together are not supported",
    ),
    ("tensor family", {}, ["parallelism.tensor=2"], "parallelism.tensor: splits llama models, not gpt2"),
    (
        "tensor heads",
        {},
        ["model.family=llama", "parallelism.tensor=2", "model.dims.heads=1", "model.dims.kv_heads=1"],
        "parallelism.tensor: model heads (1) must divide by 2",
    ),
    ("pipeline zero", {}, ["parallelism.pipeline=2", "deepspeed.zero_stage=2"], "deepspeed.zero_stage: pipeline parallelism works with ZeRO stage 0-1 (got 2)"),
    (
        "tensor zero",
        {},
        ["model.family=llama", "parallelism.tensor=2", "deepspeed.zero_stage=3"],
        "deepspeed.zero_stage: tensor parallelism works with ZeRO stage 0-2 (got 3)",
    ),
    ("pipeline elastic", {}, ["parallelism.pipeline=2", "scaling.min_workers=1"], "scaling.min_workers: a pipeline-parallel job cannot be elastic"),
    (
        "pipeline stages",
        {},
        ["parallelism.pipeline=4", "scaling.num_workers=4"],
        "parallelism.pipeline: 4 stages need at least as many layers (the model has 2)",
    ),
]


@pytest.mark.parametrize("name, sections, overrides, message", BAD_JOBS, ids=[case[0] for case in BAD_JOBS])
def test_bad_jobs_name_the_field(corpus, tmp_path, name, sections, overrides, message):
    path = write_job(tmp_path / "job.yaml", tiny_job(corpus, **sections))
    with pytest.raises(UserError) as err:
        checked_job(path, overrides)
    assert message in str(err.value)
    assert len(str(err.value).splitlines()) == 1


def test_csv_without_the_text_column(tmp_path):
    table = tmp_path / "table.csv"
    table.write_text("title,category\nhello,a\n")
    with pytest.raises(UserError, match=r"data.text_field: .*table.csv has no column 'text' \(columns: title, category\)"):
        checked_job(write_job(tmp_path / "job.yaml", tiny_job(table)))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_cache_dir(corpus, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    job = tiny_job(corpus, data={**tiny_job(corpus)["data"], "cache_dir": str(locked / "cache")})
    with pytest.raises(UserError, match="data.cache_dir: .* is not writable"):
        checked_job(write_job(tmp_path / "job.yaml", job))


def test_cache_dir_that_is_a_file(corpus, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    job = tiny_job(corpus, data={**tiny_job(corpus)["data"], "cache_dir": str(blocker / "cache")})
    with pytest.raises(UserError, match="data.cache_dir: .*blocker/cache is not writable"):
        checked_job(write_job(tmp_path / "job.yaml", job))


def test_empty_corpus(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(UserError, match=r"data.paths: the corpus is empty \(1 files, 0 bytes\)"):
        checked_job(write_job(tmp_path / "job.yaml", tiny_job(empty)))


@pytest.mark.parametrize(
    "text, message",
    [
        ("train: {max_steps: 1}\ntrain: {max_steps: 2}\n", "line 2: duplicate key 'train'"),
        ("train: !!python/object:os.system {}\n", "not valid YAML"),
        ("- a list\n", "expected a mapping of sections"),
    ],
)
def test_strict_yaml(tmp_path, text, message):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        load_job(path)


def test_validate_cli_exit_codes_and_speed(corpus, tmp_path):
    """A bad file: exit 2, one line on stderr, no traceback, fast, and without importing torch or ray."""
    good = write_job(tmp_path / "good.yaml", tiny_job(corpus))
    bad = write_job(tmp_path / "bad.yaml", tiny_job(corpus, deepspeed={"zero_stage": 7}))
    result = cli_process("validate", str(bad), env={"NO_COLOR": "1"})
    assert result.cpu_s < 3  # CPU time: on a loaded machine, wall time says little
    assert result.code == 2
    assert result.stderr.strip() == f"error: {bad}: deepspeed.zero_stage: must be 0, 1, 2 or 3 (got 7)"
    assert cli_process("validate", str(good), env={"NO_COLOR": "1"}).code == 0
    probe = "import sys, orchestrator.cli; assert not {'torch', 'ray'} & set(sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe]).returncode == 0


def test_schema_command_prints_json_schema():
    result = run_cli("schema")
    assert result.code == 0, str(result)
    schema = yaml.safe_load(result.stdout)
    assert set(schema["properties"]) == set(JobConfig.model_fields)


def test_registries_cover_every_name_the_schema_accepts():
    assert set(SCHEDULES) == set(SCHEDULE_NAMES)
    assert set(OPTIMIZERS) == set(OptimizerConfig.model_fields["name"].annotation.__args__)
    assert [ModelConfig(family=name).family for name in FAMILIES] == list(FAMILIES)


def test_docs_job_reference_is_generated_from_the_models():
    from orchestrator.config.reference import markdown

    jobs_doc = (REPO / "docs" / "jobs.md").read_text()
    block = jobs_doc.split("<!-- job-reference:start -->\n")[1].split("<!-- job-reference:end -->")[0]
    assert block == markdown(), "docs/jobs.md's job file reference is stale: paste `orchestrator schema --markdown` into it"
    for name in JobConfig.model_fields:  # every section and key of the models is in it
        assert f"| `{name}` |" in block
