"""Fixtures of the in-process loop tests (local_mode.py): the session's Ray instance (local_ray, tests/conftest.py),
one MLflow store for the package, and DeepSpeed as one rank builds it."""

import pytest
from helpers import mlflow_store_in


@pytest.fixture(scope="package", autouse=True)
def one_rank(deepspeed_of_one_rank):
    """Each test builds the loop's DeepSpeed engine in this process, a group of one rank."""


@pytest.fixture(scope="package")
def tracking_uri(tmp_path_factory, migrated_mlflow_db) -> str:
    return mlflow_store_in(tmp_path_factory.mktemp("mlflow"), migrated_mlflow_db)
