"""What a pretrained model's safetensors files hold, read from their headers alone (no torch, no weights read): the
name and shape of every tensor. Validation and `plan` read a model directory of any architecture this way."""

from pathlib import Path

from safetensors import safe_open


def saved_shapes(directory: Path) -> dict[str, list[int]]:
    """Tensor name -> shape, over every *.safetensors file of the directory (empty if it has none)."""
    shapes = {}
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(path, framework="numpy") as weights:
            shapes |= {name: weights.get_slice(name).get_shape() for name in weights.keys()}  # noqa: SIM118 (no mapping)
    return shapes


def saved_modules(directory: Path) -> set[str]:
    """The modules that hold weights (a tensor's module: its name up to the last dot)."""
    return {name.rpartition(".")[0] for name in saved_shapes(directory)}
