"""Where a job's time to its first optimizer step goes: wall-clock marks, taken by the driver and then by rank 0,
turned into the duration of each phase (the time since the mark before it)."""

import time
from dataclasses import dataclass, field

# A job's phases in the order they happen, each named by what had just finished when it was marked: the driver's,
# then rank 0's. (A sweep trial's start at its MLflow run.)
PHASES = (
    "python_start",
    "ray_connect",
    "data_prepare",
    "mlflow_run",
    "worker_processes",
    "worker_start",
    "worker_imports",
    "model_init",
    "deepspeed_init",
    "checkpoint_restore",
    "first_batch",
    "first_step",
)


@dataclass
class Timeline:
    started: float = field(default_factory=time.time)
    marks: dict[str, float] = field(default_factory=dict)

    def mark(self, phase: str, at: float | None = None) -> None:
        """Marks `phase` done now, or at `at` (never before the mark before it)."""
        self.marks[phase] = max(at or time.time(), max(self.marks.values(), default=self.started))

    def phases(self) -> dict[str, float]:
        """Seconds each phase took, in the order they were marked."""
        previous, durations = self.started, {}
        for phase, at in self.marks.items():
            durations[phase] = at - previous
            previous = at
        return durations

    def total(self) -> float:
        return max(self.marks.values(), default=self.started) - self.started


def format_phases(durations: dict[str, float]) -> str:
    return ", ".join(f"{phase.replace('_', ' ')} {seconds:.1f} s" for phase, seconds in durations.items())
