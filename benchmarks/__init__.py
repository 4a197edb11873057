"""Benchmarks that print measured figures (docs/benchmarks.md): `python -m benchmarks.<name>`, or all of them with
`python -m benchmarks.run_all`."""

import os

from orchestrator.local_node import LOOPBACK_NODE


def caller_names_a_cluster() -> bool:
    """The caller's environment names a running cluster for the benchmarks (its GCS and its job API)."""
    return bool(os.environ.get("RAY_ADDRESS") and os.environ.get("RAY_API_SERVER_ADDRESS"))


# Without a cluster named by the caller, common.local_cluster starts a local head (loopback, token auth) that this
# process joins. Ray reads how to reach it when it is imported, which the benchmarks' modules do before they start it.
if not caller_names_a_cluster():
    for name, value in (LOOPBACK_NODE | {"RAY_AUTH_MODE": "token"}).items():
        os.environ.setdefault(name, value)
