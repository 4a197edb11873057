"""Whom a worker answers to: Ray Train, which gives it its rank and the checkpoint of a restarted run and takes its
results; or Tune itself, for a sweep trial of one worker that trains in its own process (Ray Train's local mode):
there, Ray Train refuses those calls (they belong to Tune in a Tune function) and the process is the only worker."""

from dataclasses import dataclass

import ray.train


class TrainRun:
    def rank_and_size(self) -> tuple[int, int]:
        context = ray.train.get_context()
        return context.get_world_rank(), context.get_world_size()

    def checkpoint(self) -> ray.train.Checkpoint | None:
        """The run's own latest checkpoint, when Ray Train restarted it after a failure."""
        return ray.train.get_checkpoint()

    def report(self, result: dict[str, float], checkpoint_directory: str | None) -> None:
        ray.train.report(result, checkpoint=ray.train.Checkpoint.from_directory(checkpoint_directory) if checkpoint_directory else None)


@dataclass
class TuneTrial:
    metric: str  # Tune takes only results that have the sweep's metric

    def rank_and_size(self) -> tuple[int, int]:
        return 0, 1

    def checkpoint(self) -> None:
        """None: a restarted trial starts from its Tune checkpoint, which the plan gives (TrainPlan.initial_checkpoint)."""
        return None

    def report(self, result: dict[str, float], checkpoint_directory: str | None) -> None:
        from ray import tune  # trials only: a job's worker does without Tune

        if self.metric in result:
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(checkpoint_directory) if checkpoint_directory else None)


def answers_to(tune_metric: str | None) -> TrainRun | TuneTrial:
    return TuneTrial(tune_metric) if tune_metric else TrainRun()
