"""Secrets never leave the process: values under names that look like tokens, passwords or keys, and passwords in
URIs, are masked before anything is logged to MLflow (params, tags, artifacts) or printed to the job log."""

import os
import re
from typing import Any

MASK = "***"
# A whole word of the name (max_tokens and tokenizer are not secrets; api_token and GITHUB_TOKEN are).
SECRET_NAME = re.compile(
    r"(?<![a-z])(token|secret|passw(or)?d|api[_-]?key|access[_-]?key|private[_-]?key|credentials?|authorization)(?![a-z])",
    re.I,
)
URI_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<password>[^@/\s]+)@", re.I)
MIN_SECRET_CHARS = 4  # shorter values would mask ordinary words in the text
NOT_SECRETS = {"true", "false", "none", "null", "auto"}  # switches named like secrets (SOME_TOKEN_ENABLED=true)


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name))


def mask_uri_passwords(text: str) -> str:
    return URI_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)


def redact_config(tree: Any) -> Any:
    """A copy of nested config with the values of secret-looking keys masked and URI passwords hidden."""
    if isinstance(tree, dict):
        return {key: MASK if is_secret_name(str(key)) and value not in (None, "") else redact_config(value) for key, value in tree.items()}
    if isinstance(tree, list):
        return [redact_config(item) for item in tree]
    if isinstance(tree, str):
        return mask_uri_passwords(tree)
    return tree


def secret_values(tree: Any = None) -> set[str]:
    """The values to hide wherever they appear: secret-looking environment variables and config keys."""
    found = {value for name, value in os.environ.items() if is_secret_name(name)}
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if is_secret_name(str(key)) and isinstance(value, (str, int)) and not isinstance(value, bool):
                    found.add(str(value))
                else:
                    stack.append(value)
        elif isinstance(node, list):
            stack.extend(node)
    return {value for value in found if len(value) >= MIN_SECRET_CHARS and value.lower() not in NOT_SECRETS}


def redact_text(text: str, tree: Any = None) -> str:
    """Free text (an error, a log line) with every secret value of the environment and of `tree` masked."""
    for value in sorted(secret_values(tree), key=len, reverse=True):
        text = text.replace(value, MASK)
    return mask_uri_passwords(text)
