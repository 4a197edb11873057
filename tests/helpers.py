"""Small corpora and job files the tests write into temporary directories, and the CLI run in this process."""

import contextlib
import io
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from orchestrator.train.local import free_port  # noqa: F401 - the tests' free port, as the trials pick theirs

REPO = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[[0-9;]*m")
HARD_STOP_S = 5.0  # an in-process command still running then is a hang: stopped, so one hang costs seconds, not the suite

SUBJECTS = ["the cat", "a dog", "my friend", "the old man", "our teacher", "the bird", "a child", "the farmer"]
VERBS = ["sees", "likes", "follows", "finds", "paints", "calls", "feeds", "watches"]
OBJECTS = ["the red ball", "a small house", "the green tree", "a quiet river", "the tall tower", "an open door"]


def write_jsonl(path: Path, records: Iterable[dict]) -> Path:
    """`records` as JSON lines (non-ASCII text as it is), in a directory made if missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def mlflow_store_in(directory: Path, migrated_store: Path) -> str:
    """The URI of an empty MLflow store in `directory`: a copy of the migrated one (conftest.py migrated_mlflow_db)."""
    shutil.copyfile(migrated_store, directory / "mlflow.db")
    return f"sqlite:///{directory}/mlflow.db"


def write_corpus(directory: Path, documents: int = 1500, seed: int = 0) -> Path:
    """A learnable corpus: short documents of sentences from a tiny grammar, as JSON lines."""
    rng = random.Random(seed)
    sentence = lambda: f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}."  # noqa: E731
    texts = (" ".join([sentence() for _ in range(rng.randint(2, 5))]) for _ in range(documents))
    return write_jsonl(directory / "corpus.jsonl", ({"text": text} for text in texts))


EN_FR = {  # a word-for-word grammar: a translation a tiny model learns in a few hundred steps
    "subjects": [
        ("the cat", "le chat"),
        ("a dog", "un chien"),
        ("my friend", "mon ami"),
        ("the old man", "le vieil homme"),
        ("our teacher", "notre professeur"),
        ("the bird", "l'oiseau"),
        ("a child", "un enfant"),
    ],
    "verbs": [("sees", "voit"), ("likes", "aime"), ("follows", "suit"), ("finds", "trouve"), ("calls", "appelle")],
    "objects": [
        ("the red ball", "la balle rouge"),
        ("a small house", "une petite maison"),
        ("the green tree", "l'arbre vert"),
        ("a quiet river", "une rivière calme"),
        ("the tall tower", "la grande tour"),
        ("an open door", "une porte ouverte"),
    ],
    "times": [
        ("today", "aujourd'hui"),
        ("every day", "chaque jour"),
        ("at night", "la nuit"),
        ("in the morning", "le matin"),
        ("on sunday", "le dimanche"),
        ("again", "encore"),
    ],
}


def write_translation_corpus(directory: Path, seed: int = 0) -> Path:
    """Every sentence of the grammar (1,260 distinct pairs {"en", "fr"}), shuffled, as JSON lines."""
    sentences = [[]]
    for slot in ("subjects", "verbs", "objects", "times"):
        sentences = [parts + [pair] for parts in sentences for pair in EN_FR[slot]]
    random.Random(seed).shuffle(sentences)
    pairs = ({"en": " ".join(en for en, _ in parts), "fr": " ".join(fr for _, fr in parts)} for parts in sentences)
    return write_jsonl(directory / "pairs.jsonl", pairs)


def write_question_corpus(directory: Path, contexts: int = 300, seed: int = 0) -> Path:
    """Two questions on each context of two sentences, "Who feeds the red ball?": the answer is the subject of the
    sentence that has the question's verb and object."""
    rng = random.Random(seed)
    records = []
    for _ in range(contexts):
        subjects, deeds = rng.sample(SUBJECTS, 2), [(verb, rng.choice(OBJECTS)) for verb in rng.sample(VERBS, 2)]
        context = " ".join(f"{subject} {verb} {thing}." for subject, (verb, thing) in zip(subjects, deeds))
        records += [{"context": context, "question": f"who {verb} {thing}?", "answer": subject} for subject, (verb, thing) in zip(subjects, deeds)]
    return write_jsonl(directory / "questions.jsonl", records)


class StandInTokenizer:
    """What build_model reads of a trained tokenizer, for models trained on token ids made up by the test."""

    eos_token_id, pad_token_id = 0, 1

    def __init__(self, size: int):
        self.size = size

    def __len__(self):
        return self.size


def tiny_job(corpus: Path, **sections) -> dict:
    """A job small enough to train 20 steps with 2 CPU workers in seconds; `sections` update it."""
    job = {
        "model": {
            "family": "gpt2",
            "size": "tiny",
            "dims": {"layers": 2, "hidden": 64, "heads": 2, "ffn": 128, "max_positions": 64},
        },
        "data": {
            "paths": [str(corpus)],
            "tokenizer": {"train": "bpe", "vocab_size": 512},
            "seq_len": 32,
            "cache_dir": str(corpus.parent / "cache"),
        },
        "train": {
            "max_steps": 20,
            "micro_batch_size": 4,
            "optimizer": {"name": "adamw", "lr": 3e-3},
            "schedule": {"name": "cosine", "warmup_steps": 2},
            "log_every": 1,
            "eval_every": 10,
            "eval_at_start": True,
        },
        "scaling": {"num_workers": 2},
        "checkpoint": {"every_steps": 5, "keep": 2},
        "tracking": {"system_metrics_every_s": 1},
    }
    for section, values in sections.items():
        if isinstance(values, dict) and isinstance(job.get(section), dict):
            job[section] = {**job[section], **values}
        else:
            job[section] = values
    return job


# Architectures no family of models/families.py presets: a job trains them from a local model directory. Each small.
OTHER_ARCHITECTURES = ("qwen2", "mistral", "phi3")
TINY_DECODER = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
}


def save_pretrained_model(directory: Path, model_type: str, tokenizer, auto_class: str = "AutoModelForCausalLM", **config) -> Path:
    """A random-init model of `model_type` and its tokenizer, saved as a Hugging Face model directory: what a hub
    download would give, made here offline."""
    import transformers

    ids = {"bos_token_id": tokenizer.eos_token_id, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    settings = transformers.AutoConfig.for_model(model_type, vocab_size=len(tokenizer), **ids, **(TINY_DECODER | config))
    getattr(transformers, auto_class).from_config(settings).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def write_job(path: Path, job: dict) -> Path:
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def orchestrator(cluster, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs the CLI as a user would, as a driver of the test cluster."""
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        cwd=REPO,
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def submit(cluster, *args: str, timeout: float = 600) -> str:
    """Runs the CLI as users run jobs, through the cluster's job API (`ray job submit`); returns the job's log."""
    command = ["ray", "job", "submit", "--address", cluster.dashboard, "--working-dir", str(REPO), "--"]
    result = subprocess.run(command + ["python", "-m", "orchestrator", *args], cwd=REPO, env=cluster.env, capture_output=True, text=True, timeout=timeout)
    output = ANSI.sub("", result.stdout + result.stderr)
    assert result.returncode == 0 and "succeeded" in result.stdout, output[-5000:]
    return output


def submission_id(output: str) -> str:
    """The job's id, as `ray job submit` announces it."""
    return re.search(r"Job '(raysubmit_\w+)' submitted successfully", output).group(1)


def mlflow_run_id(output: str) -> str:
    return re.search(r"MLflow run \((?:new|resumed)\): \S*/runs/([0-9a-f]+)", output).group(1)


def write_sweep(directory: Path, job: dict, **sweep) -> Path:
    """A sweep over `job` (written beside it) that searches the learning rate unless `sweep` says otherwise."""
    write_job(directory / "job.yaml", job)
    sweep = {"base": "job.yaml", "search_space": {"train.optimizer.lr": {"loguniform": [1e-4, 1e-2]}}} | sweep
    path = directory / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


# --- jobs running in the background, for the fault tests ---------------------------------------------------------


def ray_job(cluster, *args: str) -> str:
    """`ray job <args>` against the test cluster; its output without colours."""
    result = subprocess.run(["ray", "job", *args, "--address", cluster.dashboard], env=cluster.env, capture_output=True, text=True, timeout=120)
    return ANSI.sub("", result.stdout + result.stderr)


def start_job(cluster, submission_id: str, *args: str, env_vars: dict[str, str] | None = None) -> None:
    """Submits `python -m orchestrator <args>` through the job API without waiting for it; `env_vars` go into the
    job's runtime environment (its driver and every actor of it)."""
    command = ["ray", "job", "submit", "--no-wait", "--submission-id", submission_id, "--address", cluster.dashboard]
    if env_vars:
        command += ["--runtime-env-json", json.dumps({"env_vars": env_vars})]
    command += ["--working-dir", str(REPO), "--", "python", "-m", "orchestrator", *args]
    result = subprocess.run(command, cwd=REPO, env=cluster.env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, ANSI.sub("", result.stdout + result.stderr)


def job_status(cluster, submission_id: str) -> str:
    """PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED, read from `ray job status` (which words the last three)."""
    output = ray_job(cluster, "status", submission_id)
    for words, status in ((" succeeded", "SUCCEEDED"), (" was stopped", "STOPPED"), (" failed", "FAILED")):
        if f"'{submission_id}'{words}" in output:
            return status
    return re.search(r"Status for job '[^']+': (\w+)", output).group(1)


def wait_for_job(cluster, submission_id: str, timeout: float = 600) -> str:
    """The job's final status (SUCCEEDED, FAILED or STOPPED)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = job_status(cluster, submission_id)
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status
        time.sleep(2)
    raise TimeoutError(f"job {submission_id} still {status} after {timeout} s")


def ray_state(cluster, kind: str, *filters: str, detail: bool = False) -> list[dict]:
    """`ray list <kind>` (jobs, nodes, actors, placement-groups...) from the cluster's state API, with filters such
    as "state=ALIVE"."""
    command = ["ray", "list", kind, "--address", cluster.dashboard, "--format", "json"]
    command += [arg for condition in filters for arg in ("--filter", condition)] + (["--detail"] if detail else [])
    listing = subprocess.run(command, env=cluster.env, capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    return [] if listing.stdout.startswith("No resource") else json.loads(listing.stdout)  # none: a line, not []


def job_api(cluster, path: str):
    """What the cluster's job API answers at /api/jobs/<path>, straight over HTTP with the cluster's token: as the
    job API has it (no client's formatting), and without starting a `ray` process (1-2 s each)."""
    token = (Path.home() / ".ray" / "auth_token").read_text().strip()
    request = urllib.request.Request(f"{cluster.dashboard}/api/jobs/{path}", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def submitted_jobs(cluster) -> list[dict]:
    """The cluster's submitted jobs: every integration test's teardown asks."""
    return job_api(cluster, "")


def stop_running_jobs(cluster) -> list[str]:
    """Stops every submitted job still PENDING or RUNNING, waiting for each to end; returns their ids."""
    running = [job["submission_id"] for job in submitted_jobs(cluster) if job.get("submission_id") and job["status"] in ("PENDING", "RUNNING")]
    for submission_id in running:
        ray_job(cluster, "stop", submission_id)
    return running


def wait_until(condition, timeout: float, what: str, every: float = 1.0):
    """Polls `condition()` until it returns something truthy, which is returned."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(what)


# --- the CLI in this process ----------------------------------------------------------------------------------------


class CaseTimedOut(BaseException):
    """Raised into a case that runs past HARD_STOP_S (a BaseException, so no `except Exception` swallows it)."""


@dataclass
class Outcome:
    code: int | None
    stdout: str
    stderr: str
    cpu_s: float  # the command's CPU time: what it costs, whatever else the machine runs
    crash: str = ""  # an exception that escaped main(): a traceback in the real process
    hung: bool = False

    def __str__(self) -> str:
        state = "hung" if self.hung else f"exit {self.code} after {self.cpu_s:.2f} s of CPU"
        return f"{state}{f', {self.crash}' if self.crash else ''}: {(self.stdout + self.stderr)[:500]!r}"


@contextlib.contextmanager
def hard_stop(seconds: float):
    """Interrupts the block after `seconds` (SIGALRM; a running regex or glob is interrupted too), then hands the
    alarm back to whoever held it before (pytest-timeout)."""

    def stop(signum, frame):
        raise CaseTimedOut()

    started = time.monotonic()
    previous_handler = signal.signal(signal.SIGALRM, stop)
    previous_left, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        if previous_left:
            signal.setitimer(signal.ITIMER_REAL, max(previous_left - (time.monotonic() - started), 0.001))


def run_cli(*args: str, hard_stop_s: float = HARD_STOP_S) -> Outcome:
    """`orchestrator ARGS` through the real entry point (orchestrator.cli.main), in this process."""
    from orchestrator.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    code, crash, hung = None, "", False
    argv, sys.argv = sys.argv, ["orchestrator", *args]
    started = time.process_time()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), hard_stop(hard_stop_s):
            main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except CaseTimedOut:
        hung = True
    except Exception as err:  # noqa: BLE001 - what the real process would print as a traceback
        crash, code = f"{type(err).__name__}: {str(err)[:300]}", 1
    finally:
        sys.argv = argv
    return Outcome(code, stdout.getvalue(), stderr.getvalue(), time.process_time() - started, crash, hung)


def children_cpu_s() -> float:
    """CPU seconds of the child processes this process has waited for (subprocess.run's)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cli_process(*args: str | bytes, cwd: Path = REPO, env: dict[str, str] | None = None, timeout: float = 60) -> Outcome:
    """`python -m orchestrator ARGS` in a process of its own, as a user runs it (bytes arguments pass undecodable
    bytes through; its output must be UTF-8), `env` added to this process's environment."""
    started = children_cpu_s()
    done = subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=cwd, env=os.environ | (env or {}), capture_output=True, timeout=timeout)
    return Outcome(done.returncode, done.stdout.decode(), done.stderr.decode(), children_cpu_s() - started)
