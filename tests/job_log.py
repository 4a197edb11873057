"""What a job log is made of: the lines the framework writes (its prints and its loggers', whichever process they
come from) and the rest (libraries, Ray). A framework line is one of the message shapes below; a new kind of line
the framework writes belongs here, so that anything else counts as noise."""

import re

# Ray's prefix of a line that a process of the job printed, "(RayTrainWorker pid=123, ip=10.0.0.2) ", and its note
# on a line that several processes printed.
RAY_PREFIX = re.compile(r"^\((?:\S+ )?pid=\S+(?:, ip=[^)]+)?\) ")
REPEATED = re.compile(r" \[repeated \d+x across cluster\]$")

FRAMEWORK_MESSAGES = [
    # the driver (train/launch.py, data/pipeline.py, runtime.py, cli/training.py)
    r"connected to .+",
    r"released placement group \S+ of ended job \S+",
    r"--restart: deleted the checkpoints in .+",
    r"data: .+",
    r"MLflow (?:sweep )?run(?: \((?:new|resumed)\))?: .+",
    r"finished: .+",
    # rank 0 (train/loop.py, tracking/metrics.py)
    r"\d+ workers? on \d+ node\(s\).*",
    r"resumed from step \d+ .+",
    r"step \d+ \(untrained\) \| eval .+",
    r"step \d+/\d+ \| loss .+",
    r"step \d+ \| eval .+",
    r"first optimizer step .+",
    r"registered the model as models:/\S+",
    r"MLflow (?:unreachable|is back)\b.+",
]
FRAMEWORK_MESSAGE = re.compile("|".join(f"(?:{shape})" for shape in FRAMEWORK_MESSAGES))
MLFLOW_RUN_URL = re.compile(r"https?://\S+/runs/[0-9a-f]{32}\b")


def message(line: str) -> str:
    """The line as its process wrote it: without Ray's prefix and repeat note."""
    return REPEATED.sub("", RAY_PREFIX.sub("", line, count=1))


def is_framework_line(line: str) -> bool:
    return FRAMEWORK_MESSAGE.fullmatch(message(line)) is not None


def lines_of(log: str) -> list[str]:
    """The lines a person reads: split as a terminal shows them (a progress bar's carriage returns too), blank ones
    left out."""
    return [line for line in log.splitlines() if line.strip()]


def framework_lines(log: str) -> tuple[int, int]:
    """(framework lines, all lines) of a job log."""
    lines = lines_of(log)
    return sum(map(is_framework_line, lines)), len(lines)
