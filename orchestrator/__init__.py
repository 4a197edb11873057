"""orchestrator: a YAML training job -> Ray Data -> Ray Train workers running DeepSpeed -> an MLflow run.

Follow one job: config/ (the YAML schema) -> train/launch.py (driver) -> data/pipeline.py (Ray Data) ->
train/loop.py (each worker) -> train/engine.py (DeepSpeed) -> tracking/ (MLflow).
"""
