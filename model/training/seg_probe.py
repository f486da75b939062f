"""The segmentation baseline: a pixel-wise linear probe on the frozen, pretrained encoder.

The segmentation counterpart of the classification probe (model.training.probe): the bar a trained network
must clear, fitted in a minute on the run's own folds. Each image's encoder features at strides 8, 16 and 32
are brought to stride 8 and concatenated (the linear segmentation probe of the self-supervised literature,
e.g. DINOv2's "linear" evaluation); a logistic regression per fold maps each stride-8 cell to its majority
class, and its logits are upsampled (bilinear) to the input size. Background cells are subsampled for the
fit and weighted back up, so the probabilities stay calibrated. Its OOF maps go to RUN_DIR/probe/oof.npy
and the run reports its Dice beside the recipe's, on the same folds, with its own decision rule.

Written here because no kept library fits a linear probe on a frozen smp encoder.
"""
from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..network import create_network, input_norm
from .run_folder import RunFolder, save_array

log = logging.getLogger("train")
STRIDE = 8
NEGATIVES_PER_POSITIVE = 5
MIN_NEGATIVES = 4000


@torch.inference_mode()
def encoder_features(cfg, task, images: np.ndarray, device: torch.device) -> np.ndarray:
    """(N, D, S/8, S/8) float32: the last three encoder stages, at stride 8."""
    spec = task.kind.network_spec(cfg, len(task.heads))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)   # a random encoder (pretrained none) must be the same in every process
        encoder = create_network(cfg.backbone, spec["outputs"], cfg.pretrained, architecture=spec["architecture"]).encoder
    encoder = encoder.eval().to(device)
    norm = input_norm(cfg.backbone, cfg.input_norm).to(device)
    size = images.shape[1] // STRIDE
    out = []
    for start in range(0, len(images), 16):
        x = norm(torch.from_numpy(images[start:start + 16]).permute(0, 3, 1, 2).to(device))
        stages = encoder(x)[-3:]
        out.append(torch.cat([F.interpolate(f.float(), size=(size, size), mode="bilinear", align_corners=False)
                              if f.shape[-1] != size else f.float() for f in stages], 1).cpu().numpy())
    return np.concatenate(out)


def cell_labels(masks: np.ndarray, n_classes: int) -> np.ndarray:
    """(N, S/8, S/8) the majority class of each stride-8 cell."""
    n, size = len(masks), masks.shape[1] // STRIDE
    share = np.stack([(masks == c).reshape(n, size, STRIDE, size, STRIDE).mean((2, 4)) for c in range(n_classes + 1)], 1)
    return share.argmax(1)


def fit_cells(features: np.ndarray, cells: np.ndarray, rng: np.random.Generator):
    """(standardise, model) for the cells of the training images: every foreground cell and a weighted
    sample of background ones."""
    from sklearn.linear_model import LogisticRegression
    X = features.transpose(0, 2, 3, 1).reshape(-1, features.shape[1])
    y = cells.reshape(-1)
    foreground, background = np.flatnonzero(y > 0), np.flatnonzero(y == 0)
    keep = min(len(background), max(MIN_NEGATIVES, NEGATIVES_PER_POSITIVE * len(foreground)))
    chosen = rng.choice(background, keep, replace=False)
    rows = np.concatenate([foreground, chosen])
    weight = np.concatenate([np.ones(len(foreground)), np.full(keep, len(background) / max(keep, 1))])
    mean, std = X[rows].mean(0), X[rows].std(0) + 1e-6
    if len(np.unique(y[rows])) < 2:
        return mean, std, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # convergence notes on separable cells
        model = LogisticRegression(C=1.0, max_iter=300).fit((X[rows] - mean) / std, y[rows], sample_weight=weight)
    return mean, std, model


def predict_cells(fitted, features: np.ndarray, n_classes: int, size: int) -> np.ndarray:
    """(N, C, size, size) foreground probabilities, the cell logits upsampled before the activation."""
    mean, std, model = fitted
    n, d, h, w = features.shape
    if model is None:
        return np.zeros((n, n_classes, size, size), np.float32)
    X = (features.transpose(0, 2, 3, 1).reshape(-1, d) - mean) / std
    logits = X @ model.coef_.T + model.intercept_                     # (cells, 1) or (cells, classes seen)
    logits = torch.from_numpy(logits.reshape(n, h, w, -1)).permute(0, 3, 1, 2).float()
    logits = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)
    if logits.shape[1] == 1:                                          # two classes seen: background, class 1
        return logits.sigmoid().numpy()
    probs = logits.softmax(1)
    out = torch.zeros(n, n_classes, size, size)
    for row, cls in enumerate(model.classes_):
        if cls > 0:
            out[:, cls - 1] = probs[:, row]
    return out.numpy()


def run_pixel_probe(task, cfg, cache, labels, fold_ids: np.ndarray, run_dir: Path, device) -> np.ndarray:
    """Fit the probe on every fold's training images; save and return its OOF probabilities."""
    started = time.perf_counter()
    features = encoder_features(cfg, task, cache.eval, device)
    cells = cell_labels(labels.masks, len(task.heads))
    oof = np.zeros((len(cache), len(task.heads), cache.eval.shape[1], cache.eval.shape[2]), np.float16)
    rng = np.random.default_rng(cfg.seed)
    for fold in np.unique(fold_ids):
        train, val = fold_ids != fold, fold_ids == fold
        fitted = fit_cells(features[train], cells[train], rng)
        oof[val] = predict_cells(fitted, features[val], len(task.heads), cache.eval.shape[1])
    save_array(RunFolder(run_dir).probe_oof, oof)
    log.info("%s: pixel linear probe on frozen %s features fitted on %d folds in %.1fs", task.name, cfg.backbone,
             len(np.unique(fold_ids)), time.perf_counter() - started)
    return oof
