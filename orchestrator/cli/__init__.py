"""The command line. Each module adds its commands to the one Typer app (app.py)."""

from orchestrator.cli import cluster, jobs, training  # noqa: F401 (importing them registers their commands)
from orchestrator.cli.app import app, main

__all__ = ["app", "main"]
