"""Plots for MLflow: a run's training curves, and the comparison of a sweep's trials. What a person opens first."""

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes
import matplotlib.pyplot as plt  # noqa: E402

PANELS = [
    ("loss", ["train/loss", "eval/loss"]),
    ("learning rate", ["train/lr"]),
    ("tokens/s", ["train/tokens_per_s"]),
]


def training_curves(history: dict[str, list[tuple[int, float]]], path: str) -> None:
    """Loss, learning rate and throughput over steps, and a panel of the task's evaluation metrics if it has any."""
    task_metrics = sorted(key for key in history if key.startswith("eval/") and key not in ("eval/loss", "eval/perplexity"))
    panels = PANELS + ([("evaluation", task_metrics)] if task_metrics else [])
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6))
    for axis, (title, keys) in zip(axes, panels):
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


def _trial_label(row, searched_keys) -> str:
    """`a1b2c_00003: 0.0012, cosine`: the trial and the values the sweep gave it."""
    values = [f"{row[key]:.2g}" if isinstance(row[key], float) else str(row[key]) for key in searched_keys]
    return f"{row['trial_id']}: {', '.join(values)}"


def sweep_plots(table, histories: dict, sweep, total_steps: int, directory: str) -> None:
    """The plots a person compares trials with: every trial's learning rate and metric over steps, and the final
    metric against the learning rate, one colour per schedule. `histories`: {trial_id: {key: [(step, value)]}}."""
    metric = sweep.metric
    labels = {row["trial_id"]: _trial_label(row, sweep.search_space) for _, row in table.iterrows()}
    for key, name in (("train/lr", "lr_schedules.png"), (metric, f"{metric.replace('/', '_')}_by_trial.png")):
        figure, axis = plt.subplots(figsize=(10, 4.2))
        for trial_id, series in histories.items():
            if series.get(key):
                steps, values = zip(*series[key])
                axis.plot(steps, values, marker="o" if len(steps) < 20 else None, markersize=3, label=labels.get(trial_id, trial_id))
        axis.set_title(f"{key} of every trial")
        axis.set_xlabel("step")
        axis.set_xlim(0, total_steps)
        axis.grid(alpha=0.3)
        axis.legend(
            fontsize=7, title=", ".join(key.rsplit(".", 1)[-1] for key in sweep.search_space), title_fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1)
        )
        figure.tight_layout()
        figure.savefig(f"{directory}/{name}", dpi=100)
        plt.close(figure)

    lr_key, schedule_key = "train.optimizer.lr", "train.schedule.name"
    scored = table[table[metric].notna()] if metric in table else table.iloc[:0]
    if lr_key not in table or scored.empty:  # no trial reached its metric (all failed): no point to place
        return
    figure, axis = plt.subplots(figsize=(7, 4.2))
    groups = scored.groupby(schedule_key) if schedule_key in scored else [("all trials", scored)]
    for schedule, rows in groups:
        axis.scatter(rows[lr_key], rows[metric], label=str(schedule))
    axis.set_xscale("log")
    axis.set_xlabel("peak learning rate")
    axis.set_ylabel(f"final {metric}")
    axis.set_title(f"final {metric} against learning rate, by schedule")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(f"{directory}/{metric.replace('/', '_')}_vs_lr.png", dpi=100)
    plt.close(figure)


def confusion_matrix_plot(truth: list[int], predicted: list[int], label_names: list[str], directory: str) -> None:
    """confusion_matrix.png and .csv (rows: true label, columns: predicted) of a classification evaluation."""
    from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix

    matrix = confusion_matrix(truth, predicted, labels=range(len(label_names)))
    size = max(5, 0.35 * len(label_names) + 3)
    figure, axis = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay(matrix, display_labels=label_names).plot(ax=axis, xticks_rotation="vertical", colorbar=False, include_values=len(label_names) <= 12)
    axis.set_title(f"confusion matrix ({len(truth)} validation examples)")
    figure.tight_layout()
    figure.savefig(f"{directory}/confusion_matrix.png", dpi=100)
    plt.close(figure)
    header = "true\\predicted," + ",".join(label_names)
    rows = [f"{name}," + ",".join(map(str, row)) for name, row in zip(label_names, matrix)]
    with open(f"{directory}/confusion_matrix.csv", "w") as out:
        out.write("\n".join([header, *rows]) + "\n")


def token_length_histogram(bins: list[float], counts: list[int], path: str) -> None:
    figure, axis = plt.subplots(figsize=(6, 3.6))
    if counts:
        axis.stairs(counts, bins, fill=True, alpha=0.7)
    axis.set_title("tokens per text (after cleaning)")
    axis.set_xlabel("tokens")
    axis.set_ylabel("texts")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
