"""The error gallery: for each class (or label), the most confident out-of-fold mistakes, each with a
Grad-CAM overlay of what drove the prediction, in RUN_DIR/errors.png.

Single-label: a row per true class, with the images of that class that the run got wrong, most confident
wrong prediction first; the heat map is the Grad-CAM of the class it predicted. Multi-label: a row per
label, alternating its most confident false positives and false negatives; the heat map is that label's.
Each image is explained by the fold network that did not train on it, on the very view run.py would see.
Grad-CAM (Selvaraju et al. 2017): the last feature map weighted by the mean gradient of the logit.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..checkpoint import load_checkpoint, network_from_checkpoint
from ..network import InputNorm
from .plots import image_grid
from .run_folder import RunFolder

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
    """Per row: (title, [(image index, head to explain, caption), ...]), the most confident first; the kind
    says what a mistake is (a wrong class, or a false positive or negative of a label)."""
    return task.kind.mistakes(task, labels, probs, predicted, PER_ROW)


def write_gallery(run_dir: Path, task, images: list[np.ndarray], labels: np.ndarray, probs: np.ndarray,
                  fold_ids: np.ndarray, rule: dict, norm: InputNorm) -> Path:
    """Draw RUN_DIR/errors.png for OOF ``probs`` of the (N, H, W, 3) inference views ``images``."""
    run = RunFolder(run_dir)
    predicted = task.decide(probs, rule)
    rows = pick_mistakes(task, labels, probs, predicted)
    nets: dict[int, torch.nn.Module] = {}

    def draw(ax, pick):
        index, head, caption = pick
        fold = int(fold_ids[index])
        if fold not in nets:
            nets[fold] = network_from_checkpoint(load_checkpoint(run.fold(fold).best))
        ax.imshow(images[index])
        ax.imshow(grad_cam(nets[fold], norm, images[index], head), cmap="jet", alpha=0.35, vmin=0, vmax=1)
        ax.set_title(caption, fontsize=8)

    image_grid(run.gallery, rows, draw, f"{task.title}: most confident out-of-fold mistakes, Grad-CAM of "
               "the predicted output", PER_ROW, empty="no mistake")
    return run.gallery
