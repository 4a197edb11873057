"""Process-wide settings (orchestrator/environment.py): what each entry point sets, and the library lines dropped."""

import importlib
import logging
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from helpers import REPO

from orchestrator import environment


@pytest.fixture
def env(monkeypatch):
    """This process's environment, as the settings leave it, given back afterwards."""
    monkeypatch.setattr(os, "environ", dict(os.environ))
    for name in [*environment.JOB_ENV, *environment.FAIL_FAST_MLFLOW, "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"]:
        os.environ.pop(name, None)
    return os.environ


def test_a_job_process_gets_the_job_settings_unless_already_set(env):
    env["RAY_DATA_LOG_LEVEL"] = "DEBUG"  # set by the user, or by the job's runtime environment
    environment.job_process_environment()
    assert env["RAY_DATA_LOG_LEVEL"] == "DEBUG"
    assert env["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false" and env["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "1.0"
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in env  # a driver's MLflow requests keep MLflow's retries
    assert logging.getLogger("orchestrator.train.loop").isEnabledFor(logging.INFO)


def test_deepspeeds_op_is_built_by_this_environments_ninja_in_a_directory_of_its_own(env):
    """Ray workers started without the environment on PATH used the machine's ninja, a shell the environment's: each
    read the other's build log as out of date and rebuilt the op (40 s) whenever the two took turns."""
    env["PATH"] = "/usr/bin:/bin"
    env.pop("TORCH_EXTENSIONS_DIR", None)
    environment.job_process_environment()
    environment.job_process_environment()
    tools = Path(sys.executable).parent
    assert env["PATH"] == f"{tools}:/usr/bin:/bin"  # once
    assert shutil.which("ninja", path=env["PATH"]) == str(tools / "ninja")
    assert env["TORCH_EXTENSIONS_DIR"] == str(Path(sys.prefix) / "torch_extensions")


def test_a_build_lock_left_by_a_killed_build_is_removed_and_a_live_one_kept(tmp_path):
    """A job killed while DeepSpeed built its op left torch's lock behind, and the next job waited on it for ever."""
    stale, live = tmp_path / "stale", tmp_path / "live"
    stale.touch()
    live.touch()
    old = time.time() - environment.STALE_BUILD_LOCK_S - 1
    os.utime(stale, (old, old))
    for lock in (stale, live, tmp_path / "none"):
        environment.remove_stale_build_lock(lock)
    assert not stale.exists() and live.exists()


def test_a_worker_fails_mlflow_requests_fast(env):
    env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "5"
    environment.worker_environment()
    assert env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0" and env["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "30"


def test_handled_library_lines_are_dropped_and_the_rest_kept(env, caplog):
    environment.job_process_environment()
    with caplog.at_level(logging.INFO):
        logging.getLogger("DeepSpeed").warning("Setting accelerator to CPU. If you have GPU or other accelerator, ...")
        logging.getLogger("DeepSpeed").warning("Something else")
        logging.getLogger().info("DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully")
    assert [record.getMessage() for record in caplog.records] == ["Something else"]


def test_handled_warnings_are_filtered_by_message_and_category(env):
    with warnings.catch_warnings(record=True) as caught:
        environment.job_process_environment()
        warnings.warn("`torch.distributed.all_gather_into_tensor` is deprecated. Please use ...", FutureWarning)
        warnings.warn("`torch.distributed.all_gather_into_tensor` is deprecated. Please use ...", UserWarning)
        warnings.warn("something else is deprecated", FutureWarning)
    shown = [(w.category, str(w.message)[:14]) for w in caught]
    assert shown == [(UserWarning, "`torch.distrib"), (FutureWarning, "something else")]


def test_a_ray_token_is_found_where_ray_looks_for_it(env, tmp_path):
    env["RAY_AUTH_TOKEN_PATH"] = str(tmp_path / "auth_token")
    assert not environment.ray_token_exists()
    (tmp_path / "auth_token").write_text("secret")
    assert environment.ray_token_exists()


def test_the_driver_writes_no_colour_codes_into_a_file_or_pipe():
    code = "from orchestrator.environment import driver_environment\n"
    code += "driver_environment()\nprint('\\x1b[36m(pid=1)\\x1b[0m line')"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == "(pid=1) line\n", done.stderr


def test_rays_setup_hook_names_the_process_environment():
    module, name = environment.ray_init_options()["runtime_env"]["worker_process_setup_hook"].rsplit(".", 1)
    assert getattr(importlib.import_module(module), name) is environment.ray_process_environment
