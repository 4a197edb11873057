"""Training curves as a PNG for the MLflow run: what a person opens first when reviewing a run."""

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes
import matplotlib.pyplot as plt  # noqa: E402

PANELS = [
    ("loss", ["train/loss", "eval/loss"]),
    ("learning rate", ["train/lr"]),
    ("tokens/s", ["train/tokens_per_s"]),
]


def training_curves(history: dict[str, list[tuple[int, float]]], path: str) -> None:
    figure, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 3.6))
    for axis, (title, keys) in zip(axes, PANELS):
        for key in keys:
            if history.get(key):
                steps, values = zip(*history[key])
                axis.plot(steps, values, marker="o" if len(steps) < 20 else None, label=key)
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
