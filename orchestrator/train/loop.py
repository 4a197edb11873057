"""What every Ray Train worker runs: set up (train/setup.py), then step until `total_steps`, evaluating
(train/evaluation.py) and checkpointing (train/checkpoint.py) when each says it is time, and export the model
(train/export.py). Each rank's reporter (train/reporting.py) says what happens: rank 0's into MLflow and the job log,
the others' nothing. Every rank runs every line here: the collectives (loss averaging, evaluation, checkpointing,
the gather at export) happen on all of them at the same steps.
"""

from orchestrator.environment import worker_environment
from orchestrator.train.checkpoint import Checkpointer, report_to_ray
from orchestrator.train.evaluation import Evaluator
from orchestrator.train.export import exported_model
from orchestrator.train.setup import setup
from orchestrator.train.worker import TrainPlan


def train_loop(config: dict) -> None:
    worker_environment()
    plan: TrainPlan = config["plan"]
    worker, reporter = setup(config["job"], plan)
    evaluator, checkpointer = Evaluator(worker, reporter), Checkpointer(worker, reporter)
    if evaluator.due_at_start():
        evaluator.run(step=0)
        reporter.restart_window()  # keep evaluation time out of tokens/s, as below

    final = None  # the last step's result: reported after the export, so whoever ends the run on it loses nothing
    for inputs in worker.batches():  # this worker's micro batches of each step, up to the last
        loss = worker.layout.train_step(worker.engine, inputs, reporter.at_fullest())
        step = worker.progress.advance(worker.tokens_per_step)
        reporter.step(step, loss)
        # Results go to Ray (and through it to Tune) at evaluation and checkpoint steps.
        if evaluator.due(step) or checkpointer.due(step):
            result = reporter.result(step) | (evaluator.run(step) if evaluator.due(step) else {})
            reporter.flush()  # what Ray (or a Tune scheduler) sees is also in MLflow, even if the run is stopped now
            saved = checkpointer.save() if checkpointer.due(step) else None
            if step == plan.total_steps:
                final = result, saved
            else:
                report_to_ray(worker.answers_to, result, saved)
                reporter.restart_window()  # keep evaluation and checkpoint time out of tokens/s

    with exported_model(worker) as hf_dir:  # every rank gathers the model; rank 0's reporter logs it
        reporter.exported(hf_dir)
    if final:
        report_to_ray(worker.answers_to, *final)
