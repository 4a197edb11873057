"""The final model as an MLflow Model, registered in the Model Registry.

Its python_function flavour runs the same `Predictor` as `orchestrator predict`, over the Hugging Face directory
the model carries (artifacts/hf: weights, tokenizer and the model card), with this package's code beside it (code/).
So `mlflow.pyfunc.load_model("models:/<name>/<version>")` gives the predictions `orchestrator predict` writes,
wherever torch and transformers are installed. Not the transformers flavour: transformers 5 has no pipeline for
seq2seq generation, and its pipelines would not frame texts with the separators that training used.
"""

import importlib.metadata
import os
import shutil
import tempfile
from pathlib import Path

import mlflow.models
import mlflow.pyfunc
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, Schema

from orchestrator.inference.predictor import EXTRA_INPUTS, PREDICTION_COLUMNS, Predictor

HF_DIR = "hf"  # the artifact name of the Hugging Face directory inside the MLflow model
ARTIFACT_PATH = "model"  # where in its run the model is logged
PACKAGE = Path(__file__).resolve().parents[1]  # orchestrator/, shipped in the model so it loads without this repo
# What importing inference/predictor.py needs (pyyaml and pydantic: orchestrator.config), pinned as installed here.
REQUIREMENTS = ("torch", "transformers", "tokenizers", "numpy", "pandas", "pydantic", "pyyaml", "mlflow")


class TextModel(mlflow.pyfunc.PythonModel):
    """A `text` column in (and a `question` column for question answering); the task's prediction columns out
    (`predicted` and `score`, `generated`, or `answer` and `score`)."""

    def load_context(self, context) -> None:
        self.predictor = Predictor(context.artifacts[HF_DIR])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return pd.DataFrame(self.predictor.columns(model_input["text"].astype(str).tolist(), model_input))


def input_columns(task: str) -> tuple[str, ...]:
    return ("text", *EXTRA_INPUTS.get(task, ()))


def signature(task: str) -> ModelSignature:
    outputs = [ColSpec(kind, name) for name, kind in PREDICTION_COLUMNS[task].items()]
    return ModelSignature(inputs=Schema([ColSpec("string", name) for name in input_columns(task)]), outputs=Schema(outputs))


def save_model(hf_dir: str, path: str, task: str, example_texts: list[str]) -> None:
    """An MLflow model at `path`. The signature is given, not inferred: MLflow would load the model to infer it, and
    in a ZeRO-3 worker transformers builds every model inside deepspeed.zero.Init, which waits for the other ranks."""
    with tempfile.TemporaryDirectory() as staging:
        code = shutil.copytree(PACKAGE, os.path.join(staging, PACKAGE.name), ignore=shutil.ignore_patterns("__pycache__"))
        mlflow.pyfunc.save_model(
            path,
            python_model=TextModel(),
            artifacts={HF_DIR: hf_dir},
            code_paths=[code],
            signature=signature(task),
            # every input column holds the example texts (question answering: questions asked about themselves)
            input_example=pd.DataFrame({name: example_texts for name in input_columns(task)}),
            pip_requirements=[f"{name}=={importlib.metadata.version(name)}" for name in REQUIREMENTS],
        )


def hf_directory(model_dir: Path) -> Path:
    """The Hugging Face directory inside a saved MLflow model (its MLmodel file says where)."""
    flavour = mlflow.models.Model.load(str(model_dir)).flavors["python_function"]
    return model_dir / flavour["artifacts"][HF_DIR]["path"]


def register(client: MlflowClient, run_id: str, name: str) -> ModelVersion:
    """A new version of registered model `name` (created on first use), pointing at the run's logged model."""
    try:
        client.create_registered_model(name, description="Trained by orchestrator; see each version's run.")
    except MlflowException as err:
        if err.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
    source = f"{client.get_run(run_id).info.artifact_uri}/{ARTIFACT_PATH}"
    return client.create_model_version(name, source, run_id=run_id)
