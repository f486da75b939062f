"""The error gallery: for each class (or label), the most confident out-of-fold mistakes, each with a
Grad-CAM overlay of what drove the prediction, in RUN_DIR/errors.png.

Single-label: a row per true class, with the images of that class that the run got wrong, most confident
wrong prediction first; the heat map is the Grad-CAM of the class it predicted. Multi-label: a row per
label, alternating its most confident false positives and false negatives; the heat map is that label's.
Each image is explained by the fold network that did not train on it, on the very view run.py would see.
Grad-CAM (Selvaraju et al. 2017): the last feature map weighted by the mean gradient of the logit.
"""
from __future__ import annotations

from itertools import zip_longest
from pathlib import Path

import numpy as np
import torch

from ..bundle import load_checkpoint, network_from_checkpoint
from ..metric import UNKNOWN
from ..network import InputNorm
from .plots import plt, save_figure

PER_ROW = 4


def grad_cam(net, norm: InputNorm, image: np.ndarray, head: int) -> np.ndarray:
    """(H, W) in [0, 1]: where the features raised logit ``head`` for the uint8 HWC ``image``."""
    x = norm(torch.from_numpy(image).permute(2, 0, 1)[None])
    with torch.enable_grad():
        features = net.forward_features(x)
        features.retain_grad()
        net.forward_head(features)[0, head].backward()
    weights = features.grad.mean((2, 3), keepdim=True)
    cam = torch.relu((weights * features).sum(1, keepdim=True))
    cam = torch.nn.functional.interpolate(cam, size=image.shape[:2], mode="bilinear", align_corners=False)[0, 0]
    cam = cam.detach().numpy()
    return cam / cam.max() if cam.max() > 0 else cam


def pick_mistakes(task, labels: np.ndarray, probs: np.ndarray, predicted: np.ndarray) -> list[tuple[str, list]]:
    """Per row: (title, [(image index, head to explain, caption), ...]), the most confident first."""
    rows = []
    if task.kind.name == "single-label":
        truth = labels.reshape(-1)
        for c, name in enumerate(task.heads):
            wrong = np.flatnonzero((truth == c) & (predicted != c))
            wrong = wrong[np.argsort(-probs[wrong, predicted[wrong]])][:PER_ROW]
            rows.append((f"true {name}", [(i, int(predicted[i]), f"as {task.heads[predicted[i]]} "
                                                                 f"{probs[i, predicted[i]]:.2f}") for i in wrong]))
        return rows
    for j, name in enumerate(task.heads):
        known = labels[:, j] != UNKNOWN
        false_pos = np.flatnonzero(known & (labels[:, j] == 0) & (predicted[:, j] == 1))
        false_neg = np.flatnonzero(known & (labels[:, j] == 1) & (predicted[:, j] == 0))
        false_pos = false_pos[np.argsort(-probs[false_pos, j])]
        false_neg = false_neg[np.argsort(probs[false_neg, j])]
        picked = [i for pair in zip_longest(false_pos, false_neg) for i in pair if i is not None][:PER_ROW]
        rows.append((name, [(i, j, f"{'false +' if labels[i, j] == 0 else 'false -'} p={probs[i, j]:.2f}")
                            for i in picked]))
    return rows


def write_gallery(run_dir: Path, task, images: list[np.ndarray], labels: np.ndarray, probs: np.ndarray,
                  fold_ids: np.ndarray, rule: dict, mean, std) -> Path:
    """Draw RUN_DIR/errors.png for OOF ``probs`` of the (N, H, W, 3) inference views ``images``."""
    predicted = task.decide(probs, rule)
    rows = pick_mistakes(task, labels, probs, predicted)
    norm = InputNorm(mean, std)
    nets: dict[int, torch.nn.Module] = {}
    fig, axes = plt.subplots(len(rows), PER_ROW, figsize=(2.3 * PER_ROW, 2.5 * len(rows)), squeeze=False,
                             layout="constrained")
    for r, (title, picks) in enumerate(rows):
        for col in range(PER_ROW):
            ax = axes[r, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(title, fontsize=9)
            if col >= len(picks):
                ax.set_frame_on(False)
                if col == 0:
                    ax.text(0.5, 0.5, "no mistake", ha="center", va="center", fontsize=8)
                continue
            index, head, caption = picks[col]
            fold = int(fold_ids[index])
            if fold not in nets:
                nets[fold] = network_from_checkpoint(load_checkpoint(run_dir / f"fold{fold}" / "best.pt"))
            ax.imshow(images[index])
            ax.imshow(grad_cam(nets[fold], norm, images[index], head), cmap="jet", alpha=0.35, vmin=0, vmax=1)
            ax.set_title(caption, fontsize=8)
    fig.suptitle(f"{task.title}: most confident out-of-fold mistakes, Grad-CAM of the predicted output", fontsize=10)
    save_figure(fig, run_dir / "errors.png")
    return run_dir / "errors.png"
