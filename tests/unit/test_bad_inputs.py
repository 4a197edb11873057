"""Malformed and hostile job, sweep and data files (tests/bad_inputs/, one file each): every one exits 2 with
one line naming the cause, quickly, without a traceback, without running anything it holds, and before Ray or
MLflow is touched. Each runs through the CLI's entry point in this process; a few also as a real process, for the
exit status and stderr a user sees."""

import shutil
from pathlib import Path

import pytest
from helpers import Outcome, cli_process, run_cli

CASES_DIR = Path(__file__).parent.parent / "bad_inputs"

# file -> what its one error line must say
EXPECTED = {
    "invalid_yaml.yaml": "not valid YAML: while parsing a flow mapping",
    "empty.yaml": "the file is empty",
    "only_comment.yaml": "the file is empty",
    "binary_file.yaml": "not UTF-8 text (byte 0xff on line 1)",
    "undecodable_bytes.yaml": "not UTF-8 text (byte 0xff on line 3)",
    "top_level_list.yaml": "expected a mapping of sections at the top level (got a list)",
    "top_level_scalar.yaml": "expected a mapping of sections at the top level (got a str)",
    "section_is_list.yaml": "model: must be a valid dictionary",
    "section_is_number.yaml": "train: must be a valid dictionary",
    "missing_data_section.yaml": "data: Field required",
    "duplicate_keys.yaml": "line 4: duplicate key 'train'",
    "python_tag.yaml": "could not determine a constructor for the tag 'tag:yaml.org,2002:python/object/apply:os.system'",
    "python_name_tag.yaml": "could not determine a constructor for the tag 'tag:yaml.org,2002:python/name:subprocess.Popen'",
    "alias_bomb.yaml": "expands to more than 100,000 values",
    "wrong_type_lr.yaml": "train.optimizer.lr: must be a valid number",
    "wrong_type_steps.yaml": "train.max_steps: must be a valid integer (got [10])",
    "negative_lr.yaml": "train.optimizer.lr: must be greater than 0 (got -0.001)",
    "nan_lr.yaml": "train.optimizer.lr: must be a finite number (got nan)",
    "infinite_steps.yaml": "train.max_steps: must be a valid integer",
    "zero_stage_7.yaml": "deepspeed.zero_stage: must be 0, 1, 2 or 3 (got 7)",
    "num_workers_0.yaml": "scaling.num_workers: must be greater than 0 (got 0)",
    "micro_batch_0.yaml": "train.micro_batch_size: must be greater than 0 (got 0)",
    "val_fraction_over_1.yaml": "data.val_fraction: must be less than 0.5 (got 1.5)",
    "unknown_top_key.yaml": "trainer: unknown key",
    "unknown_nested_key.yaml": "train.learning_rate: unknown key",
    "unknown_optimizer.yaml": "train.optimizer.name: must be 'adamw', 'adam' or 'sgd' (got 'sgd_with_magic')",
    "unknown_schedule.yaml": "train.schedule.name: must be one of 'constant'",
    "unknown_family.yaml": "model.family: a random-init model is one of gpt2, llama, bert, t5 (got 'gpt5')",
    "unknown_precision.yaml": "deepspeed.precision: must be 'fp32', 'bf16' or 'fp16' (got 'fp8')",
    "warmup_past_max_steps.yaml": "train.schedule.warmup_steps: 50 exceeds max_steps (10)",
    "task_family_mismatch.yaml": "model.family: seq2seq trains t5 models (got 'gpt2')",
    "qa_without_question_field.yaml": "data.question_field: the question_answering task needs it",
    "question_field_outside_qa.yaml": "data.question_field: not used by the sequence_classification task",
    "data_path_to_nothing.yaml": "data.paths[0]: no file matches 'data/no_such_file.jsonl'",
    "data_path_is_directory.yaml": "data.paths[0]: 'data/a_directory.jsonl' is a directory",
    "data_file_empty.yaml": "data.paths: the corpus is empty (1 files, 0 bytes)",
    "csv_without_text_column.yaml": "data.text_field: data/no_text_column.csv has no column 'text'",
    "parquet_that_is_not_parquet.yaml": "data/not_parquet.parquet is not a readable parquet file",
    "tokenizer_path_to_nothing.yaml": "data.tokenizer.path: 'data/no_tokenizer.json' does not exist",
    "pretrained_not_a_model.yaml": "model.pretrained: 'data' is not a Hugging Face model directory",
    "pretrained_architecture_task_cannot_build.yaml": "model.pretrained: AutoModelForCausalLM cannot build a t5 model (config.json model_type), which causal_lm needs",
    "cache_dir_is_a_file.yaml": "data.cache_dir: data/corpus.jsonl is not writable",
    "resume_checkpoint_of_another_model.yaml": "model.family llama in the checkpoint, gpt2 in the job",
    "resume_corrupt_checkpoint.yaml": "orchestrator_checkpoint.json is corrupt (not JSON)",
    "sft_template_that_does_not_render.yaml": "data.chat_template: cannot render a record (TemplateError: the first message must be a system message) (data/prompts.jsonl:1)",
    "sweep_unknown_searched_key.yaml": "search_space.train.optimizer.learning_rate: not a key of the job",
    "sweep_loguniform_zero.yaml": "search_space.train.optimizer.lr.loguniform: bounds must be > 0",
    "sweep_base_missing.yaml": "data/no_such_job.yaml: no such file",
    "sweep_base_is_directory.yaml": "data: is a directory, not a YAML file",
}
SECONDS_ALLOWED = 5
IN_A_REAL_PROCESS = ["python_tag.yaml", "resume_corrupt_checkpoint.yaml", "sweep_base_missing.yaml"]


def test_every_case_file_has_an_expectation():
    assert sorted(path.name for path in CASES_DIR.glob("*.yaml")) == sorted(EXPECTED)
    assert len(EXPECTED) >= 30


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> Path:
    """A copy of the cases, so that nothing a case might write lands in the repository."""
    return Path(shutil.copytree(CASES_DIR, tmp_path_factory.mktemp("cases") / "bad_inputs"))


def command_of(name: str) -> str:
    return "sweep" if name.startswith("sweep_") else "train"


def environment(mlflow_db: Path) -> dict[str, str]:
    return {
        "MLFLOW_TRACKING_URI": f"sqlite:///{mlflow_db}",
        "RAY_ADDRESS": "127.0.0.1:1",  # nothing listens there: reaching Ray would fail late and slowly, not exit 2
    }


def assert_refused(name: str, outcome: Outcome, cases: Path, mlflow_db: Path) -> None:
    assert not outcome.crash and not outcome.hung and outcome.code == 2, str(outcome)
    lines = outcome.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), outcome.stderr
    assert EXPECTED[name] in lines[0]
    assert "Traceback" not in outcome.stdout + outcome.stderr
    assert outcome.cpu_s < SECONDS_ALLOWED, f"{outcome.cpu_s:.1f} s of CPU"
    assert not mlflow_db.exists()
    assert not (cases / "python_tag_executed").exists()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_file_exits_2_with_one_line_naming_the_cause(cases: Path, tmp_path: Path, monkeypatch, name: str):
    mlflow_db = tmp_path / "mlflow.db"
    for variable, value in environment(mlflow_db).items():
        monkeypatch.setenv(variable, value)
    monkeypatch.chdir(cases)
    assert_refused(name, run_cli(command_of(name), name), cases, mlflow_db)


@pytest.mark.parametrize("name", IN_A_REAL_PROCESS)
def test_bad_file_in_a_real_process(cases: Path, tmp_path: Path, name: str):
    mlflow_db = tmp_path / "mlflow.db"
    assert_refused(name, cli_process(command_of(name), name, cwd=cases, env=environment(mlflow_db)), cases, mlflow_db)
