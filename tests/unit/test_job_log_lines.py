"""Which lines of a job log are the framework's (tests/job_log.py), on lines of a real job log (a 2-worker
gpt-tiny job with its own embedded Ray, before the library lines were turned off)."""

from job_log import framework_lines, is_framework_line, lines_of, message

FRAMEWORK = """\
connected to the Ray cluster at local
data: cache hit, preprocessing skipped: /tmp/logs-cache/causal_lm-48e067d1f7ba6a3af362
data: 15,217 rows read, 15,037 kept (cache: hit)
data:   dedup_exact: -89 (duplicate: 89)
MLflow run (new): run 2e2335a54d06489896739c1c49f7096c in sqlite:////tmp/logs-mlflow.db (view with: mlflow ui --backend-store-uri sqlite:////tmp/logs-mlflow.db)
(RayTrainWorker pid=17964) 2 workers on 1 node(s)
(RayTrainWorker pid=17964) step 0 (untrained) | eval loss 8.342 | perplexity 4195
(RayTrainWorker pid=17964) first optimizer step 647.9 s after the job started: python start 44.2 s, ray connect 43.6 s
(RayTrainWorker pid=17964, ip=10.0.0.7) step 10/40 | loss 8.0706 | lr 5.00e-04 | 1,606 tok/s | eta 00:00:38
(RayTrainWorker pid=17964) step 20 | eval loss 7.432 | perplexity 1689
(RayTrainWorker pid=17964) registered the model as models:/gpt-tiny/1
(RayTrainWorker pid=17964) MLflow unreachable while sending the model (ConnectionError); retrying
finished: {'train/lr': 0.0001, 'train/loss': 6.9237, 'eval/loss': 6.8756, 'eval/perplexity': 968.3307}
MLflow run: http://127.0.0.1:5000/#/experiments/1/runs/2e2335a54d06489896739c1c49f7096c
"""

LIBRARIES = """\
[2026-12-02 11:27:44,983] [WARNING] [real_accelerator.py:213:get_accelerator] Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it.
2026-12-02 11:27:47,089	INFO worker.py:1691 -- Using address local set in the environment variable RAY_ADDRESS
2026-12-02 11:29:12,234	INFO streaming_executor.py:371 -- ✔️  Dataset dataset_0357g4fFnGx8JABlywM10q_0 execution finished in 41.08 seconds
2026/12/02 11:29:52 INFO mlflow.store.db.utils: Creating initial MLflow database tables...
(TrainController pid=17486) Requesting resources: {'CPU': 1.0} * 2
(PlacementGroupCleaner pid=17859) Traceback (most recent call last):
(RayTrainWorker pid=17964) DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully
(RayTrainWorker pid=17964) /work/main/.venv/lib/python3.11/site-packages/torch/distributed/c10d_logger.py:83: FutureWarning: `torch.distributed.all_gather_into_tensor` is deprecated.
(RayTrainWorker pid=17964)   return func(*args, **kwargs) [repeated 12x across cluster]
(RayTrainWorker pid=17964) Reporting training result 1: TrainingReport(checkpoint=None, metrics={'step': 20}) from rank 0
(RayTrainWorker pid=18017) [transformers] `loss_type=None` was set in the config but it is unrecognized. Using the default loss: `ForCausalLMLoss`.
(RayTrainWorker pid=17964) \rDownloading artifacts:   0%|          | 0/6 [00:00<?, ?it/s]\rDownloading artifacts: 100%|##########| 6/6
(RayTrainWorker pid=17964) a line that says step 10/40 | loss 1 somewhere in it
"""


def test_the_frameworks_lines_are_told_from_the_libraries():
    assert all(is_framework_line(line) for line in lines_of(FRAMEWORK))
    assert not any(is_framework_line(line) for line in lines_of(LIBRARIES.replace("\\r", "\r")))


def test_ray_prefixes_and_repeat_notes_are_not_part_of_the_message():
    line = "(RayTrainWorker pid=17964, ip=10.0.0.7) step 20 | eval loss 7.432 [repeated 2x across cluster]"
    assert message(line) == "step 20 | eval loss 7.432"
    assert message("(pid=17964) data: x") == "data: x"


def test_a_progress_bar_counts_a_line_per_frame_and_blank_lines_not_at_all():
    bar = "(RayTrainWorker pid=1) \rDownloading artifacts:   0%|\rDownloading artifacts: 100%|\n"
    assert framework_lines(FRAMEWORK + "\n\n" + bar) == (14, 17)
