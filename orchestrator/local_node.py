"""The local Ray head as one loopback node: a setting its processes and its clients share (no ray import here).

Ray binds each server and metrics exporter of a node to the node's address, or to all interfaces, and takes 127.0.0.1
as the node's address only where it supports no multi-node clusters, which this setting declares. So every process
of the local head (GCS, raylet, agents, dashboard, the Prometheus exporters, workers) listens on loopback; clients
need it too, or they look for the head at the machine's outward address. A node cannot join such a head.
"""

LOOPBACK_NODE = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
