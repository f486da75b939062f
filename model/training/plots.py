"""Training curves per fold and the OOF confusion matrix, as PNG files."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..atomic import atomic_path  # noqa: E402
from ..tasks import UNKNOWN, Task  # noqa: E402


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def plot_curves(run_dir: Path, folds: list[int]) -> None:
    for k in folds:
        history = json.loads((run_dir / f"fold{k}" / "history.json").read_text())
        epochs = [h["epoch"] + 1 for h in history]
        fig, left = plt.subplots(figsize=(6, 3.5))
        left.plot(epochs, [h["train_loss"] for h in history], "o-", color="tab:blue", label="train loss")
        left.set_xlabel("epoch")
        left.set_ylabel("train loss", color="tab:blue")
        right = left.twinx()
        right.plot(epochs, [h["val_score"] for h in history], "s-", color="tab:red", label="val score")
        right.set_ylabel("validation score", color="tab:red")
        left.set_title(f"fold {k}")
        _save(fig, run_dir / f"fold{k}" / "curves.png")


def plot_confusion(path: Path, task: Task, labels: np.ndarray, predicted: np.ndarray) -> None:
    if task.multilabel:
        fig, axes = plt.subplots(1, task.num_outputs, figsize=(3 * task.num_outputs, 3))
        for j, (ax, name) in enumerate(zip(axes, task.heads)):
            known = labels[:, j] != UNKNOWN
            _matrix(ax, labels[known, j], predicted[known, j], ["0", "1"], name)
    else:
        fig, ax = plt.subplots(figsize=(5, 4.5))
        _matrix(ax, labels, predicted, list(task.heads), "BI-RADS (OOF, tuned rule)")
    _save(fig, path)


def _matrix(ax, y_true, y_pred, names, title):
    n = len(names)
    matrix = np.zeros((n, n), dtype=int)
    np.add.at(matrix, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    ax.imshow(matrix, cmap="Blues")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, matrix[i, j], ha="center", va="center", fontsize=8)
    ax.set_xticks(range(n), names)
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
