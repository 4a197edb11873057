"""Flattening nested config into MLflow params (pure)."""

from typing import Any


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """{"train": {"optimizer": {"lr": 1e-3}}} -> {"train.optimizer.lr": "0.001"}; lists become their string."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat
