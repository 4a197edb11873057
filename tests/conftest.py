import functools
import importlib
import os
import sys
from pathlib import Path
from unittest import mock

import pytest
import ray
import typer.main
from xdist.scheduler import LoadScopeScheduling

sys.path.insert(0, str(Path(__file__).parent))  # tests/helpers.py

from helpers import mlflow_store_in, write_corpus  # noqa: E402

from orchestrator.environment import driver_data_context  # noqa: E402


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def local_ray():
    """A Ray instance of the session's own (`address="local"`), even beside a running cluster; Ray Data's context as a
    driver's (runtime.py connect). One for all the tests: starting one costs about 5 s of CPU (and half a minute on a
    loaded machine)."""
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    driver_data_context()
    yield
    ray.shutdown()


def module_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def runs_the_cluster(nodeids) -> bool:
    """Whether these tests include one on the session's test cluster (tests/integration)."""
    return any(module_of(nodeid).startswith("tests/integration/") for nodeid in nodeids)


class OneWorkerWithTheCluster(LoadScopeScheduling):
    """pytest-xdist's scheduling a module at a time (its fixtures are made once), in the order of the collection
    (pytest_collection_modifyitems), except where the test cluster runs (tests/integration): then every test runs in
    one worker, in order. `ray stop` (the cluster's teardown, `orchestrator cluster down`) stops every Ray process of
    the machine, another worker's Ray instance too; and the cluster's jobs use both cores: other tests beside them
    slowed them by more than they ran (pytest 1,529 s against 1,391 s in one process, in a fresh-clone CI)."""

    cluster_runs = False

    def __init__(self, config, log):
        super().__init__(config, log)
        config.option.loadscopereorder = False

    def schedule(self):
        if self.collection is None and self.collection_is_completed:
            self.cluster_runs = runs_the_cluster(next(iter(self.registered_collections.values()), []))
        super().schedule()

    def _split_scope(self, nodeid: str) -> str:
        return "everything" if self.cluster_runs else module_of(nodeid)


def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") == "loadscope":
        return OneWorkerWithTheCluster(config, log)
    return None


@pytest.hookimpl(trylast=True)  # after `-m` and `-k` have deselected: the items that run
def pytest_collection_modifyitems(items):
    """The modules with tests on the session's Ray instance run last, so that it is not left idling (it keeps using
    CPU) through the tests that do not need it; but first where pytest-xdist spreads the modules without the test
    cluster: they are the longest, and a long module handed out last would keep one worker busy alone. Each module's
    tests stay together and in order."""
    on_ray = {item.module for item in items if "local_ray" in item.fixturenames}
    spread = "PYTEST_XDIST_WORKER" in os.environ and not runs_the_cluster(item.nodeid for item in items)
    items.sort(key=lambda item: (item.module in on_ray) != spread)


@pytest.fixture(autouse=True)
def environment_restored():
    """Each test leaves os.environ as it found it, whatever the code it runs in this process sets for its own process
    (the job commands set RAY_AUTH_MODE=token before importing Ray: a Ray instance started later would then demand a
    token its driver does not send)."""
    with mock.patch.dict(os.environ):
        yield


@pytest.fixture(scope="session", autouse=True)
def cli_command_built_once():
    """Typer rebuilds the app's click command tree on every call (signatures, type hints, a pydantic adapter per
    option: 8 ms of CPU); a real process calls it once, the in-process tests thousands of times. The tree depends
    only on the app, which the tests do not change, so each app's is built once."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(typer.main, "get_command", functools.cache(typer.main.get_command))
        yield


@pytest.fixture(scope="session")
def deepspeed_of_one_rank():
    """DeepSpeed's engines built in this process, one rank: without the shared-memory all-reduce of its CPU backend,
    which the first deepspeed.initialize of a process loads, and JIT-compiles where it is not built yet (100 s of CPU
    here; cluster/install.sh builds it, a pip install alone does not; a build killed midway leaves a lock every later
    process waits on). The op serves only inference_all_reduce between ranks, which one rank skips."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(importlib.import_module("deepspeed.comm.torch"), "build_shm_op", lambda: None)
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
    return mlflow_store_in(tmp_path, migrated_mlflow_db)
