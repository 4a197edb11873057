"""`orchestrator` / `python -m orchestrator`: the Typer app every command module adds its commands to, and the only
place that turns a UserError into exit code 2.

Heavy imports (torch, ray) happen inside the commands that need them, so `validate` and `schema` stay fast.
"""

import sys

import typer

from orchestrator.config import UserError
from orchestrator.tracking.redact import redact_text

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Distributed training of transformers on Ray.")


def main() -> None:
    # Ctrl-C, and SIGTERM from `ray job stop` (which Ray's driver turns into SystemExit), mark the MLflow run KILLED
    # (tracking/run.py); the last checkpoint stays, and the job resumes from it when submitted again.
    try:
        app()
    except UserError as err:  # it may quote a value of the job: secrets are masked
        print(f"error: {redact_text(str(err))}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("stopped; the run can resume from its last checkpoint (submit the job again)", file=sys.stderr)
        sys.exit(130)
