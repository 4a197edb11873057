"""The one exception type for mistakes a user can fix; the CLI prints it as one line and exits 2. And how such an
error quotes what the user wrote: escaped and cut short."""

import re

CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
MAX_ECHO_CHARS = 160  # of a value quoted back in an error; the rest is cut, with its length (under the CLI's own cut of long words)


class UserError(Exception):
    """A bad job file, a bad override, missing data, or a cluster too small for the job."""


def printable(text: str, limit: int = MAX_ECHO_CHARS) -> str:
    """Text as it may reach the terminal: control characters escaped (no fake lines, no escape sequences) and cut
    past `limit` characters with a marker saying how long it was."""
    cut = text if len(text) <= limit else f"{text[:limit]}...[{len(text)} chars]"
    return CONTROL_CHARACTERS.sub(lambda match: repr(match.group())[1:-1], cut)
