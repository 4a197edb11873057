"""`orchestrator` / `python -m orchestrator`: the Typer app every command module adds its commands to, and the only
place that prints a UserError (exit 2) or one of click's usage errors: as one line, masked, escaped and bounded.

Heavy imports (torch, ray) happen inside the commands that need them, so `validate` and `schema` stay fast.
"""

import re
import sys

import typer

from orchestrator.config import UserError
from orchestrator.config.redact import redact_text
from orchestrator.environment import driver_environment

# Click's plain help: typer's rich panels print a type beside every flag (`--help <bool>`) that no option turns off.
app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Distributed training of transformers on Ray.",
)

MAX_LINE = 1000  # characters of a printed error line
MAX_WORD = 200  # characters of one word of it (a value, a key) before its middle is cut
WORD_TAIL = 20  # characters kept of a cut word's end (a closing quote, the ':' after a key)
# A word over MAX_WORD characters, matched from its first character only (linear time).
LONG_WORD = re.compile(rf"(?<!\S)\S{{{MAX_WORD + 1},}}")


def cut(text: str, omitted: int) -> str:
    return f"{text}...[+{omitted} chars]"


def _cut_word(match: re.Match) -> str:
    word = match[0]
    head = MAX_WORD - WORD_TAIL
    return cut(word[:head], len(word) - MAX_WORD) + "..." + word[-WORD_TAIL:]


def escape(text: str) -> str:
    """Non-printable characters (escape sequences, newlines, bidirectional overrides) as Python writes them: \\x1b."""
    return "".join(char if char.isprintable() else char.encode("unicode_escape").decode("ascii") for char in text)


def one_line(message: str) -> str:
    """An error for the terminal: secrets masked, its lines (one per problem) joined by '; ', long words cut in the
    middle, control characters escaped, at most about MAX_LINE characters. Linear in the message."""
    text = LONG_WORD.sub(_cut_word, "; ".join(redact_text(message).split("\n")))  # masked first: a cut hides nothing
    shown = escape(text[:MAX_LINE])  # only what can be shown is escaped: no per-character work on a huge message
    omitted = max(0, len(text) - MAX_LINE) + max(0, len(shown) - MAX_LINE)  # escapes can lengthen it again
    return cut(shown[:MAX_LINE], omitted) if omitted else shown


def fail(message: str, code: int) -> None:
    print(f"error: {one_line(message)}", file=sys.stderr)
    sys.exit(code)


def main() -> None:
    driver_environment()  # first: before any command imports ray, torch or mlflow
    # Ctrl-C, and SIGTERM from `ray job stop` (which Ray's driver turns into SystemExit), mark the MLflow run KILLED
    # (tracking/run.py); the last checkpoint stays, and the job resumes from it when submitted again.
    try:
        # Not standalone: click's usage errors come here, to be printed as one line like ours.
        sys.exit(app(standalone_mode=False))
    except UserError as err:  # it may quote a value of the job: secrets are masked
        fail(str(err), 2)
    except typer.TyperException as err:  # click's: an unknown option, a missing argument, a value of the wrong type
        if not (message := err.format_message()):  # no command given: typer has printed the help
            sys.exit(err.exit_code)
        ctx = getattr(err, "ctx", None)
        fail(message + (f" (see: {ctx.command_path} --help)" if ctx else ""), err.exit_code)
    except KeyboardInterrupt:
        print("stopped; the run can resume from its last checkpoint (submit the job again)", file=sys.stderr)
        sys.exit(130)
