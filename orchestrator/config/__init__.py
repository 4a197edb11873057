"""The job file: schema (job.py), loading and overrides (load.py), its paths (paths.py), the masking of its secrets
(redact.py), the user-facing error (errors.py)."""

from orchestrator.config.errors import UserError
from orchestrator.config.job import JobConfig
from orchestrator.config.load import load_job

__all__ = ["JobConfig", "UserError", "load_job"]
