"""Fixtures of the in-process loop tests (local_mode.py): one Ray instance and one MLflow store for the package."""

import pytest
import ray


@pytest.fixture(scope="package")
def ray_here():
    """One Ray instance for the package (`address="local"`: its own, even beside a running cluster)."""
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="package")
def tracking_uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
