"""A detection run's pictures: precision-recall curves per class, and the worst and median out-of-fold
images with their true boxes (green) and predicted ones (red, class and score beside each)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..atomic import atomic_path
from ..boxes import detections, true_boxes
from .plots import save_figure

GREEN, RED = (0, 200, 0), (230, 30, 30)


def plot_pr_curves(path: Path, task, details: dict) -> None:
    """pr.png: each class's out-of-fold precision-recall curve at IoU 0.5 (pycocotools' 101 points)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, curve in details["pr_curves"].items():
        ap50 = details["per_class"]["ap50"][name]
        ax.plot(curve["recall"], np.maximum(curve["precision"], 0), label=f"{name} (AP50 {ap50:.3f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=f"{task.name}: OOF, IoU 0.5")
    ax.legend(loc="lower left", fontsize=8)
    save_figure(fig, path)


def write_box_gallery(path: Path, task, truth: np.ndarray, predicted: np.ndarray, images: np.ndarray,
                      shown: int = 4) -> None:
    """errors.png: the ``shown`` worst images by per-image F1 at the rule's thresholds, then the median ones."""
    from ..box_metric import image_f1
    truths = true_boxes(truth)
    found = [detections(rows) for rows in predicted]
    f1 = np.array([image_f1(t, p, np.zeros(len(task.heads))) for t, p in zip(truths, found)])
    order = np.argsort(f1, kind="stable")
    middle = len(order) // 2
    chosen = list(dict.fromkeys([*order[:shown], *order[max(0, middle - shown // 2):middle + shown - shown // 2]]))
    tiles = [_draw(images[i], truths[i], found[i], task.heads, f"F1 {f1[i]:.2f}") for i in chosen]
    rows = [np.concatenate(tiles[r:r + shown] + [np.zeros_like(tiles[0])] * (shown - len(tiles[r:r + shown])), 1)
            for r in range(0, len(tiles), shown)]
    _, png = cv2.imencode(".png", cv2.cvtColor(np.concatenate(rows, 0), cv2.COLOR_RGB2BGR))
    with atomic_path(path) as tmp:
        tmp.write_bytes(png.tobytes())


def _draw(image: np.ndarray, truth, found, heads, title: str) -> np.ndarray:
    out = np.ascontiguousarray(image.copy())
    size = np.array(out.shape[1::-1] * 2, np.float64)
    for box, label in zip(*truth):
        x1, y1, x2, y2 = np.round(box * size).astype(int)
        cv2.rectangle(out, (x1, y1), (x2, y2), GREEN, 1)
    for box, score, label in zip(*found):
        x1, y1, x2, y2 = np.round(box * size).astype(int)
        cv2.rectangle(out, (x1, y1), (x2, y2), RED, 1)
        cv2.putText(out, f"{heads[label]} {score:.2f}", (x1, max(8, y1 - 2)), cv2.FONT_HERSHEY_SIMPLEX, 0.3, RED, 1)
    cv2.putText(out, title, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
    return out
