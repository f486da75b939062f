"""A segmentation run's pictures for a report: the Dice histogram of each fold (dice.png) and a gallery of
the worst and the median out-of-fold images (errors.png), each with its true contour (green), its
predicted contour (red) and its Dice."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..masks import image_dice, pixel_counts
from .plots import image_grid, plt, save_figure

PER_ROW = 4


def plot_dice_histograms(path: Path, task, dice: np.ndarray, fold_ids: np.ndarray, score: float) -> None:
    """One histogram of per-image Dice per fold (the rule kept applied), with the fold's mean."""
    folds = sorted(np.unique(fold_ids).tolist())
    fig, axes = plt.subplots(1, len(folds), figsize=(2.6 * len(folds) + 0.5, 2.6), squeeze=False, sharey=True,
                             layout="constrained")
    bins = np.linspace(0, 1, 21)
    for ax, fold in zip(axes[0], folds):
        values = dice[fold_ids == fold]
        ax.hist(values, bins=bins, color="tab:blue")
        ax.axvline(values.mean(), color="tab:red", linestyle="--")
        ax.set_title(f"fold {fold}: mean {values.mean():.3f}, n={len(values)}", fontsize=8)
        ax.set_xlabel("Dice per image")
    axes[0, 0].set_ylabel("images")
    fig.suptitle(f"{task.title}: out-of-fold Dice per image, rule applied; {task.metric} {score:.4f}", fontsize=10)
    save_figure(fig, path)


def _contours(image: np.ndarray, truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    out = np.ascontiguousarray(image.copy())
    for mask, colour in ((truth, (0, 255, 0)), (predicted, (255, 0, 0))):
        found, _ = cv2.findContours((mask > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, found, -1, colour, 1)
    return out


def pick_cases(dice: np.ndarray, has_lesion: np.ndarray) -> list[tuple[str, list[int]]]:
    """(row title, image indices): the worst images, then the median ones, among images that show a
    lesion or got one predicted (an empty slice predicted empty says nothing)."""
    informative = np.flatnonzero(has_lesion)
    if not len(informative):
        return []
    order = informative[np.argsort(dice[informative], kind="stable")]
    middle = max(0, len(order) // 2 - PER_ROW // 2)
    return [("worst", order[:PER_ROW].tolist()), ("median", order[middle:middle + PER_ROW].tolist())]


def write_seg_gallery(path: Path, task, truth, predicted: np.ndarray, images: np.ndarray) -> Path:
    """errors.png for OOF masks ``predicted`` of the (N, H, W, 3) inference views ``images``."""
    dice = image_dice(pixel_counts(predicted, truth.masks, len(task.heads)))
    has = (truth.masks > 0).reshape(len(truth), -1).any(1) | (predicted > 0).reshape(len(truth), -1).any(1)
    rows = pick_cases(dice, has) or [("no lesion in any image", [])]

    def draw(ax, i):
        ax.imshow(_contours(images[i], truth.masks[i], predicted[i]))
        ax.set_title(f"{truth.groups[i][:18]}: Dice {dice[i]:.2f}", fontsize=7)

    image_grid(path, rows, draw, f"{task.title}: out-of-fold cases, true contour green, predicted red", PER_ROW)
    return path
