"""Training curves per fold and the OOF confusion matrices, as PNG files fit for a report."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ..atomic import atomic_path  # noqa: E402
from .run_folder import RunFolder  # noqa: E402


def save_figure(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def image_grid(path: Path, rows: list, draw, title: str, per_row: int = 4, empty: str = "") -> None:
    """A grid of images: ``rows`` is [(row title, items)], ``draw(ax, item)`` draws one item; a row with
    no item says ``empty``."""
    fig, axes = plt.subplots(len(rows), per_row, figsize=(2.3 * per_row, 2.5 * len(rows)), squeeze=False,
                             layout="constrained")
    for r, (row_title, items) in enumerate(rows):
        for col in range(per_row):
            ax = axes[r, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(row_title, fontsize=9)
            if col < len(items):
                draw(ax, items[col])
                continue
            ax.set_frame_on(False)
            if col == 0 and empty:
                ax.text(0.5, 0.5, empty, ha="center", va="center", fontsize=8)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def plot_curves(run_dir: Path, task, folds: list[int]) -> None:
    """Per fold: training loss, validation score (the best epoch marked) and the learning rate."""
    for k in folds:
        folder = RunFolder(run_dir).fold(k)
        history = folder.read_history()
        if not history:
            continue
        epochs = [h["epoch"] for h in history]
        scores = [h["val_score"] for h in history]
        best = int(np.argmax(scores))
        selected = (folder.read_done() or {}).get("selected_epoch")
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.5, 5), sharex=True, height_ratios=(3, 1))
        lines = top.plot(epochs, [h["train_loss"] for h in history], "o-", color="tab:blue", label="training loss")
        top.set_ylabel("training loss")
        right = top.twinx()
        lines += right.plot(epochs, scores, "s-", color="tab:red", label=f"validation {task.metric}")
        lines += right.plot([epochs[best]], [scores[best]], "*", color="gold", markeredgecolor="black",
                            markersize=16, label=f"best: epoch {epochs[best]}, {scores[best]:.4f}")
        if selected in epochs:
            i = epochs.index(selected)
            lines += right.plot([selected], [scores[i]], "o", markerfacecolor="none", markeredgecolor="black",
                                markersize=13, label=f"selected: epoch {selected}, {scores[i]:.4f}")
        right.set_ylabel(f"validation {task.metric}")
        top.legend(lines, [ln.get_label() for ln in lines], loc="best", fontsize=8)
        top.set_title(f"{task.title}: fold {k} ({len(history)} epoch{'s' if len(history) > 1 else ''})")
        bottom.plot(epochs, [h["lr"] for h in history], ".-", color="tab:green")
        bottom.set_ylabel("learning rate")
        bottom.set_xlabel("epoch")
        bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(epochs) == 1:  # one point: give the axis some width instead of a degenerate range
            bottom.set_xlim(epochs[0] - 1, epochs[0] + 1)
        save_figure(fig, folder.curves)


def plot_confusion(path: Path, task, labels: np.ndarray, predicted: np.ndarray, score: float) -> None:
    """One confusion matrix per panel the task's kind defines (the classes, or each label's 0/1)."""
    panels = task.kind.confusion_panels(task, labels, predicted)
    size = 4.8 if len(panels) == 1 else 3.4
    fig, axes = plt.subplots(1, len(panels), figsize=(size * len(panels) + 0.6, size), squeeze=False,
                             layout="constrained")
    for ax, (title, y_true, y_pred, names) in zip(axes[0], panels):
        _matrix(fig, ax, y_true, y_pred, names, "" if len(panels) == 1 else title)
    fig.suptitle(f"{task.title}: out-of-fold, decision rule applied; {task.metric} {score:.4f}", fontsize=10)
    save_figure(fig, path)


def _matrix(fig, ax, y_true, y_pred, names, title):
    n = len(names)
    matrix = np.zeros((n, n), dtype=int)
    np.add.at(matrix, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    image = ax.imshow(matrix, cmap="Blues", vmin=0)
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, matrix[i, j], ha="center", va="center", fontsize=9,
                    color="white" if matrix[i, j] > threshold else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, ticks=MaxNLocator(integer=True))
    ax.set_xticks(range(n), names)
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    accuracy = np.trace(matrix) / matrix.sum() if matrix.sum() else float("nan")
    ax.set_title(f"{title + chr(10) if title else ''}n={matrix.sum()}, accuracy {accuracy:.3f}", fontsize=9)
