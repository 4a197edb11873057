import functools
import shutil
import sys
from pathlib import Path

import pytest
import ray
import typer.main

sys.path.insert(0, str(Path(__file__).parent))  # tests/helpers.py

from helpers import write_corpus  # noqa: E402


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def local_ray():
    """A Ray instance of the test's own (`address="local"`), even beside a running cluster."""
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session", autouse=True)
def cli_command_built_once():
    """Typer rebuilds the app's click command tree on every call (signatures, type hints, a pydantic adapter per
    option: 8 ms of CPU); a real process calls it once, the in-process tests thousands of times. The tree depends
    only on the app, which the tests do not change, so each app's is built once."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(typer.main, "get_command", functools.cache(typer.main.get_command))
        yield


@pytest.fixture(scope="session")
def migrated_mlflow_db(tmp_path_factory) -> Path:
    """An empty MLflow sqlite store with its tables made: making them runs every migration (2 s of CPU, and many
    more of waiting on the disk), so each test's store is a copy of this one."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_uri(tmp_path, migrated_mlflow_db) -> str:
    """The test's own empty MLflow store, tmp_path/mlflow.db."""
    shutil.copyfile(migrated_mlflow_db, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path}/mlflow.db"
