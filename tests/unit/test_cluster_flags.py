"""The local cluster's `ray start` (cli/cluster.py, which the integration tests' cluster shares): every server on
loopback, and Ray's auth token readable by its owner only."""

import itertools
import os
import stat
import subprocess
import sys

from orchestrator.cli.cluster import client_env, ray_start_command, restrict_token_file
from orchestrator.local_node import LOOPBACK_NODE


def test_ray_start_names_no_address_but_loopback():
    command = ray_start_command(ray_port=6390, dashboard_port=8270, num_cpus=2)
    assert command[1:3] == ["start", "--head"] and "--disable-usage-stats" in command
    for flag, value in (("--port", "6390"), ("--dashboard-port", "8270"), ("--num-cpus", "2")):
        assert command[command.index(flag) + 1] == value
    hosts = [value for flag, value in itertools.pairwise(command) if "host" in flag or "ip-address" in flag]
    assert hosts == ["127.0.0.1"], command
    assert not {"--num-cpus", "--object-store-memory"} & set(ray_start_command(6390, 8270, num_cpus=None))
    sized = ray_start_command(6390, 8270, num_cpus=None, object_store_memory=512 * 2**20)  # benchmarks/data_scale.py
    assert sized[sized.index("--object-store-memory") + 1] == str(512 * 2**20)


def test_under_the_cluster_environment_ray_takes_this_machine_for_a_loopback_node():
    """Ray binds every server and metrics exporter of a node to the node's address (or to all interfaces): the head
    and its clients must resolve it to 127.0.0.1, not to the machine's outward address."""
    env = client_env("http://127.0.0.1:5000")
    assert env["RAY_AUTH_MODE"] == "token" and env.items() >= LOOPBACK_NODE.items()
    probe = "from ray._private.services import get_node_ip_address, resolve_ip_for_localhost as r; "
    probe += "print(get_node_ip_address(), r('127.0.0.1'))"
    found = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True).stdout
    assert found.split() == ["127.0.0.1", "127.0.0.1"]


def test_a_token_file_of_before_is_made_readable_by_its_owner_only(tmp_path):
    """`cluster up` runs this after `ray get-auth-token --generate` (which it runs under umask 077, so that a new
    token is 0600 from the start: the integration tests' cluster checks the real file)."""
    token = tmp_path / ".ray" / "auth_token"
    token.parent.mkdir()
    token.write_text("t" * 64)
    token.chmod(0o644)  # as Ray 2.60 writes it
    restrict_token_file({"HOME": str(tmp_path)})
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and token.read_text() == "t" * 64

    elsewhere = tmp_path / "token"
    elsewhere.write_text("u" * 64)
    elsewhere.chmod(0o644)
    restrict_token_file({"HOME": str(tmp_path), "RAY_AUTH_TOKEN_PATH": str(elsewhere)})  # where Ray reads it then
    assert stat.S_IMODE(elsewhere.stat().st_mode) == 0o600
    restrict_token_file({"HOME": str(tmp_path / "new")})  # no token file: nothing to do


def test_a_driver_without_a_cluster_address_sees_this_machine_as_a_loopback_node(monkeypatch):
    """runtime.connect() joins the local head, or starts an embedded instance, as a loopback node, whether or not its
    shell sourced cluster/env.sh: Ray read the setting when this process imported it, so connect() sets both."""
    from ray._private import ray_constants, services, worker

    from orchestrator import runtime

    monkeypatch.setattr(worker, "_global_node", None)  # a driver not yet connected, whatever this process ran before
    for name in LOOPBACK_NODE:
        monkeypatch.setenv(name, "1")  # restored afterwards, as is the constant
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", ray_constants.ENABLE_RAY_CLUSTER)
    runtime.use_loopback_node()
    assert services.get_node_ip_address() == services.resolve_ip_for_localhost("127.0.0.1") == "127.0.0.1"
    for name, value in LOOPBACK_NODE.items():
        assert os.environ[name] == value  # for the processes Ray starts from this one
