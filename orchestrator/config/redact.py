"""Secrets never leave the process: values under names that look like tokens, passwords or keys, and the userinfo
of URLs, are masked before anything is logged to MLflow (params, tags, artifacts) or printed.

Every pattern here runs in time linear in the text (texts can be megabytes: a hostile value quoted by an error):
each match is anchored on a literal ('://', a quote) or on the start of a name, and its spans cannot be rescanned
from the next start position."""

import os
import re
from typing import Any

MASK = "***"
# A whole word of the name (max_tokens and tokenizer are not secrets; api_token and GITHUB_TOKEN are).
SECRET_WORD = (
    r"(?<![a-z])(?:token|secret|passw(?:or)?d|api[_-]?key|access[_-]?key|private[_-]?key|credentials?|authorization)"
    r"(?![a-z])"
)
SECRET_NAME = re.compile(SECRET_WORD, re.IGNORECASE)
# A URL's authority: from '://' to the path, query, fragment or whitespace. Its userinfo ends at the last '@'.
AUTHORITY = re.compile(r"://([^/?#\s]*+)")
# A secret-named key given a value in free text: `hf_token=VALUE` (--set, environment) or `'hf_token': VALUE`
# (a dict quoted by an error). The name starts where no name character precedes it, so each is scanned once.
NAME = r"(?=[\w.-]*?" + SECRET_WORD + r")[\w.-]++"
VALUE = r"""(?P<value>'[^'\n]*+'|"[^"\n]*+"|[^\s,;'")\]}]++)"""
SECRET_ASSIGNMENT = re.compile(rf"""(?P<name>(?<![\w.-]){NAME}=|(?P<quote>['"]){NAME}(?P=quote):[ \t]?){VALUE}""", re.IGNORECASE)
MIN_SECRET_CHARS = 4  # shorter values would mask ordinary words in the text
NOT_SECRETS = {"true", "false", "none", "null", "auto"}  # switches named like secrets (SOME_TOKEN_ENABLED=true)


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name))


def _mask_userinfo(match: re.Match) -> str:
    userinfo, at, host = match[1].rpartition("@")
    if not at:
        return match[0]
    user, colon, _ = userinfo.partition(":")
    return f"://{user}:{MASK}@{host}" if colon else f"://{MASK}@{host}"  # without a colon, the userinfo is a token


def mask_uri_passwords(text: str) -> str:
    """URL userinfo masked in any form: scheme://user:***@host (a password may hold '@'), scheme://***@host."""
    return AUTHORITY.sub(_mask_userinfo, text)


def _mask_value(match: re.Match) -> str:
    quote = match["value"][0] if match["value"][0] in "'\"" else ""
    return f"{match['name']}{quote}{MASK}{quote}"


def mask_secret_assignments(text: str) -> str:
    if "=" not in text and "':" not in text and '":' not in text:  # a fast path: no assignment can match
        return text
    return SECRET_ASSIGNMENT.sub(_mask_value, text)


def redact_config(tree: Any) -> Any:
    """A copy of nested config with the values of secret-looking keys masked and URI passwords hidden."""
    if isinstance(tree, dict):
        return {key: MASK if is_secret_name(str(key)) and value not in (None, "") else redact_config(value) for key, value in tree.items()}
    if isinstance(tree, list):
        return [redact_config(item) for item in tree]
    if isinstance(tree, str):
        return mask_uri_passwords(tree)
    return tree


def _leaves(node: Any) -> list[str]:
    """The text of every scalar under a node (a secret may be a list or a mapping of the wrong type)."""
    found, stack = [], [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, (str, int)) and not isinstance(item, bool):
            found.append(str(item))
    return found


def secret_values(tree: Any = None) -> set[str]:
    """The values to hide wherever they appear: secret-looking environment variables and config keys, also as
    Python quotes them in a message (repr escapes quotes and control characters)."""
    found = {value for name, value in os.environ.items() if is_secret_name(name)}
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if is_secret_name(str(key)):
                    found.update(_leaves(value))
                else:
                    stack.append(value)
        elif isinstance(node, list):
            stack.extend(node)
    found |= {repr(value)[1:-1] for value in found}
    return {value for value in found if len(value) >= MIN_SECRET_CHARS and value.lower() not in NOT_SECRETS}


def redact_text(text: str, tree: Any = None) -> str:
    """Free text (an error, a log line) with every secret value of the environment and of `tree`, every URL's
    userinfo and every value given to a secret-named key masked."""
    for value in sorted(secret_values(tree), key=len, reverse=True):
        text = text.replace(value, MASK)
    return mask_secret_assignments(mask_uri_passwords(text))
