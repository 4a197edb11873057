import sys
from pathlib import Path

import pytest
import ray

sys.path.insert(0, str(Path(__file__).parent))  # tests/helpers.py

from helpers import write_corpus  # noqa: E402

from orchestrator.environment import driver_data_context  # noqa: E402


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def local_ray():
    """A Ray instance of the test's own (`address="local"`), even beside a running cluster; Ray Data's context as a
    driver's (runtime.py connect)."""
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    driver_data_context()
    yield
    ray.shutdown()
