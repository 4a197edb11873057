"""Process-wide settings, all of them here: environment variables, log levels and filters, warning filters.

Applied at the entry points only:
- `driver_environment()`: first in the CLI's main, before any command imports ray, torch, deepspeed or mlflow;
- `ray_init_options()` and `driver_data_context()`: where a driver joins Ray (runtime.py connect);
- `ray_process_environment()`: Ray's setup hook (ray_init_options), run in every process Ray starts for a job
  (training workers, Ray Train's controller, Tune trials, Ray Data tasks) before it runs anything of the job;
- `worker_environment()`: first in the training function (Ray Train's local mode runs it in the driver).

Library lines that say nothing to a person reading a job log (the framework has handled what they report) are
filtered here, each at the logger or warning it comes from; the libraries' own warnings otherwise stay. Every
process imports this module (`orchestrator validate` too): the heavy imports are inside the functions that need them.
"""

import logging
import os
import re
import sys
import time
import warnings
from pathlib import Path

# Read at import or at use by the libraries of every process of a job; a value already set (by the user, or by the
# job's runtime environment) wins.
JOB_ENV = {
    # Ray Train's controller checks on its workers every 2 s by default, so a run that ended waits up to 2 s more to
    # be noticed, and then its teardown too: at 1 s a job ends 1-3 s sooner. The polls are cheap actor calls. Read
    # from the environment of the process that calls fit() (a job's driver, a sweep's trial).
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "1.0",
    # Ray Data logs a line for every dataset it executes, and tips, at INFO: a third of a job log. Its warnings stay.
    "RAY_DATA_LOG_LEVEL": "WARNING",
    # Ray Data's progress in a Ray worker would go through Ray's tqdm to the driver, which draws its frames into the
    # job log; without, a worker (not a terminal) logs its progress at INFO, below the level above. A driver in a
    # terminal draws its bars there; the data report (data/report.py) is the job log's summary.
    "RAY_TQDM": "0",
    # MLflow's INFO lines: database migrations of a new store, "Skip logging GPU metrics", input example checks.
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    # A frame per line in a job log, for downloads (the model's input example check) of a few local files.
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # transformers' and the Hub's bars ("Writing model shards" at every export), as above.
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    # MLflow prints the run's and the experiment's URL whenever a run on a tracking server ends: the driver prints
    # the run's URL itself, once, as its last line (tracking/run.py print_run_url).
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}

# MLflow retries a failed request for minutes by default, which would hide an outage from rank 0's metrics sender
# and hold every artifact upload behind it. The worker retries on its own terms instead (tracking/metrics.py
# `deliver`). Set in workers only: a driver's requests are few and retried by MLflow.
FAIL_FAST_MLFLOW = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


class DropLines(logging.Filter):
    """Drops the records whose message starts with one of `starts`."""

    def __init__(self, *starts: str):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.starts)


# Log lines of libraries, by logger, that report what the framework has handled.
HANDLED_LOG_LINES = {
    # Printed at import by every process that imports deepspeed (the driver and Ray Train's controller too, which
    # never build an engine). The job's scaling.use_gpu decides the device, and the driver checks that the cluster
    # has the GPUs it asks for.
    "DeepSpeed": DropLines("Setting accelerator to CPU"),
    # DeepSpeed prints it when it joins the process group (train/parallel.py join_process_group keeps the print out);
    # Ray Train's workers also turn a print into a root log record.
    "": DropLines("DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully"),
    # transformers finds no loss in GPT-2's class name (GPT2LMHeadModel) and says so before using the causal LM
    # loss, the one its task trains with.
    "transformers.modeling_utils": DropLines("`loss_type=None` was set in the config but it is unrecognized"),
    # With activation checkpointing a training forward pass keeps no cache, and says so once per worker.
    "transformers.utils.generic": DropLines("`use_cache=True` is incompatible with gradient checkpointing"),
    # The exported model holds a Python object (tracking/model.py TextModel) by design: its code ships with it.
    "mlflow.pyfunc": DropLines("Passing a Python object as `python_model`"),
    # Ray's job client says so when a followed log ends; `submit --follow` and `logs --follow` (cli/jobs.py) end with
    # the job's final status instead.
    "ray.dashboard.modules.job.sdk": DropLines("WebSocket closed for job"),
    # A one-worker sweep trial trains in its own process on purpose (tune/sweep.py); Ray says so for every trial.
    "ray.train.v2.api.config": DropLines("Running in local mode."),
}

# Python warnings that the framework has handled: (message start, category).
HANDLED_WARNINGS = [
    # DeepSpeed's ZeRO stages gather parameters with it at every step (DeepSpeed 0.18); nothing here calls it.
    ("`torch.distributed.all_gather_into_tensor` is deprecated", FutureWarning),
    # ZeRO-3 reduces its gradient partitions with it at every step (DeepSpeed 0.19 with torch 2.13), as above.
    ("`torch.distributed.reduce_scatter_tensor` is deprecated", FutureWarning),
    # DeepSpeed's pipeline moves activations and tied gradients between stages with broadcasts on purpose, outside
    # autograd (its schedule runs the backward pass itself); torch warns at every step that the broadcast has no
    # autograd kernel. The equivalence with data parallelism is tested.
    ("c10d::broadcast_: an autograd kernel was not registered", Warning),
    # peft (0.21) on GPT-2's Conv1D layers, whose weights it then treats as transposed itself; and its own call of
    # transformers' old name (5.x) when it wraps a model.
    ("fan_in_fan_out is set to False but the target module is `Conv1D`", UserWarning),
    ("`is_gradient_checkpointing` is deprecated", FutureWarning),
    # Ray Train's own DataConfig sets it (Ray 2.60), in its DatasetManager actor.
    ("`ExecutionOptions.exclude_resources` is deprecated", DeprecationWarning),
]


SHM_OP = "deepspeed_shm_comm"  # the op's build directory under TORCH_EXTENSIONS_DIR
STALE_BUILD_LOCK_S = 600


def op_build_environment() -> None:
    """DeepSpeed JIT-builds its CPU communication op (about 40 s) in the first process of a job that joins a process
    group, with the first `ninja` on PATH, into a directory shared by default by every Python environment of the
    machine. Each process of this environment uses its own ninja (pip's, which DeepSpeed requires) and its own build
    directory: two ninja versions read each other's build log as out of date, and two environments each other's
    build, so every switch between them (a shell, then Ray workers whose PATH lacks the environment) rebuilt the op.
    cluster/install.sh builds it once in this environment."""
    tools = str(Path(sys.executable).parent)
    if os.environ.get("PATH", "").split(os.pathsep)[0] != tools:
        os.environ["PATH"] = os.pathsep.join(filter(None, [tools, os.environ.get("PATH")]))
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))
    remove_stale_build_lock(Path(os.environ["TORCH_EXTENSIONS_DIR"]) / SHM_OP / "lock")


def remove_stale_build_lock(lock: Path) -> None:
    """torch's build lock (cpp_extension's FileBaton: an empty file, no owner) outlives a process killed while
    building, and every later job would wait on it forever. A build takes about 40 s: an older lock is such a one."""
    try:
        if time.time() - lock.stat().st_mtime > STALE_BUILD_LOCK_S:
            lock.unlink(missing_ok=True)
    except FileNotFoundError:
        pass


def build_ops() -> None:
    """Builds DeepSpeed's CPU communication op where the jobs of this environment look for it (cluster/install.sh)."""
    op_build_environment()
    from deepspeed.comm.torch import build_shm_op

    build_shm_op()


def job_process_environment() -> None:
    """What every process of a job holds, the driver included: JOB_ENV, the build environment of DeepSpeed's op, the
    orchestrator's log lines (progress, evaluations: the job log's content) at INFO whatever the root level, and the
    handled library lines dropped."""
    for name, value in JOB_ENV.items():
        os.environ.setdefault(name, value)
    op_build_environment()
    logging.getLogger("orchestrator").setLevel(logging.INFO)
    for logger_name, drop in HANDLED_LOG_LINES.items():
        logging.getLogger(logger_name).addFilter(drop)  # once: the same filter object is not added twice
    for message, category in HANDLED_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(message), category=category)  # replaces its earlier copy


def ray_token_exists() -> bool:
    """Whether this machine has a Ray auth token (where Ray looks for one)."""
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token"
    return bool(os.environ.get("RAY_AUTH_TOKEN")) or Path(path).is_file()


def driver_environment() -> None:
    """The driver's (the CLI's) process: a job's settings, Ray's token, and no colour codes in files."""
    job_process_environment()
    # Clusters Ray 2.60 starts ask for the token, and a client sends it only in token mode (read when ray is
    # imported). Ray starts a local cluster in token mode by the same rule, with a warning when it is not set.
    if ray_token_exists():
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    # Ray writes colour codes around the prefixes of worker lines (and of repeated lines) whatever the output is:
    # stripped from an output that is not a terminal (a job log, a pipe), as colorama does by default.
    import colorama

    if not isinstance(sys.stdout, colorama.ansitowin32.StreamWrapper):
        colorama.init()


def ray_init_options() -> dict:
    """ray.init's arguments of every driver (runtime.py connect): its own Ray lines at WARNING (no "Started a local
    Ray instance", "Connecting to existing Ray cluster"), and ray_process_environment in every process of the job."""
    setup_hook = f"{__name__}.{ray_process_environment.__name__}"
    return {"logging_level": logging.WARNING, "runtime_env": {"worker_process_setup_hook": setup_hook}}


def driver_data_context() -> None:
    """Ray Data's context of a driver, which the datasets it makes take with them (runtime.py connect, before any)."""
    import ray.data

    context = ray.data.DataContext.get_current()
    # Blocks in file order: the tokenizer and the sequences then depend only on the files and the settings.
    context.execution_options.preserve_order = True
    # Ray's default hash shuffle starts 200 partition actors per groupby: seconds each even for a small corpus.
    context.shuffle_strategy = ray.data.context.ShuffleStrategy.SORT_SHUFFLE_PULL_BASED


def ray_process_environment() -> None:
    """Ray's setup hook for the processes of a job: before they import anything of it (deepspeed, ray.data)."""
    import ray

    job_process_environment()
    # Ray Train's placement group cleaner asks the state API for its controller with no address, and Ray then looks
    # for the cluster of this machine: where there are several (other users' embedded instances), it finds several,
    # fails, and the cleaner's thread dies. Each process of the job knows its own.
    if os.environ.get("RAY_ADDRESS", "auto") in ("auto", "local", ""):
        os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    # Ray Train 2.60 names the logger of its report lines (a dict per report and rank, at INFO) by its file, outside
    # `ray.train`, where the run's logging level (train/launch.py) does not reach.
    train_context = Path(ray.__file__).parent / "train" / "v2" / "_internal" / "execution" / "context.py"
    logging.getLogger(str(train_context)).setLevel(logging.WARNING)


def worker_environment() -> None:
    """First in the training function, on every rank."""
    job_process_environment()
    os.environ.update(FAIL_FAST_MLFLOW)
