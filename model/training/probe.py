"""The linear probe: a logistic regression on frozen ImageNet features, the simplest recipe that works and
the bar every fine-tuned run must clear.

Features are the backbone's pooled output (eval mode, no dropout) for each image's exact inference view
(the cached ``img_size`` array run.py would see) and its horizontal flip. They are computed once and cached
under runs/.cache/features/, keyed by the images' content hashes, the backbone, the size and the weights,
and verified by a digest when read back. Each fold fits a logistic regression on its training images (both
views as samples; C chosen by an inner cross-validation on log-loss unless ``probe_c`` fixes it);
predictions average the two views' probabilities, as run.py's hflip TTA does. The standardisation is
folded into the linear layer, so a probe is an ordinary network: backbone plus a classifier whose weights
are the regression's, saved as a normal checkpoint and exported as a normal bundle.

Every training run computes the probe on the same folds (``run_probe``) and reports its OOF score beside
its own; with ``head_init: probe`` the fine-tuned networks start from it (LP-FT, Kumar et al. 2022).
"""
from __future__ import annotations

import hashlib
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_path
from ..checkpoint import save_checkpoint
from ..network import create_network, input_norm
from .config import TrainConfig, selected_folds
from .engine import checkpoint_meta, set_head, validation_score
from .run_folder import RunFolder, done_record, save_array

log = logging.getLogger("train")
C_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
CACHE = Path(__file__).resolve().parents[2] / "runs" / ".cache" / "features"


def _cache_key(cfg: TrainConfig, n_heads: int, hashes: list[str]) -> str:
    parts = [cfg.backbone, str(cfg.img_size), cfg.pretrained, str(cfg.seed), str(n_heads), *hashes]
    if cfg.input_norm != "backbone":      # appended, so that the keys of earlier caches still hold
        parts.append(f"input_norm={cfg.input_norm}")
    digest = hashlib.sha256("\n".join(parts).encode())
    return digest.hexdigest()[:24]


def _digest(features: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(features).tobytes()).hexdigest()


def frozen_backbone(cfg: TrainConfig, n_heads: int):
    """The probe's network in eval mode. Without pretrained weights the backbone is a random one, and the
    features and the exported probe must come from the same one: seeded, and with the task's number of
    outputs (timm's random initialisation of the backbone depends on it)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return create_network(cfg.backbone, n_heads, cfg.pretrained, cfg.drop_rate).eval()


@torch.inference_mode()
def compute_features(cfg: TrainConfig, n_heads: int, images: np.ndarray, device: torch.device) -> np.ndarray:
    """(N, 2, D) pooled features of each (H, W, 3) uint8 inference view and its flip."""
    net = frozen_backbone(cfg, n_heads).to(device).to(memory_format=torch.channels_last)
    norm = input_norm(cfg.backbone, cfg.input_norm).to(device)
    out = []
    for start in range(0, len(images), 32):
        batch = torch.from_numpy(images[start:start + 32]).permute(0, 3, 1, 2)
        x = norm(batch.to(device)).contiguous(memory_format=torch.channels_last)
        views = [net.forward_head(net.forward_features(v), pre_logits=True) for v in (x, x.flip(3))]
        out.append(torch.stack(views, 1).float().cpu().numpy())
    return np.concatenate(out)


def features_for(cfg: TrainConfig, n_heads: int, images: np.ndarray, hashes: list[str], device: torch.device,
                 cache: Path = CACHE) -> np.ndarray:
    """The cached features of these images for this backbone, size and weights, or computed and cached."""
    path = cache / f"{_cache_key(cfg, n_heads, hashes)}.npz"
    try:
        with np.load(path) as saved:
            features, digest = saved["features"], str(saved["digest"])
        if _digest(features) == digest and len(features) == len(images):
            return features
        log.warning("%s: cached features do not match their digest; computing them again", path)
    except (OSError, KeyError, ValueError):
        pass
    features = compute_features(cfg, n_heads, images, device)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, features=features, digest=_digest(features))
    except OSError as e:
        log.info("probe features not cached (%s)", e)
    return features


def _regression(X: np.ndarray, y: np.ndarray, images: np.ndarray, c: float):
    """A fitted logistic regression; C from an inner cross-validation on log-loss when ``c`` is 0. The inner
    folds keep an image's views together (split apart, they leak, and the search favours weak C)."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedGroupKFold
    per_image = np.bincount(y[np.unique(images, return_index=True)[1]])
    folds = int(min(3, per_image[per_image > 0].min()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence notes on tiny or separable data
        if c > 0 or folds < 2:
            return LogisticRegression(C=c or 0.1, max_iter=2000).fit(X, y)
        splits = list(StratifiedGroupKFold(folds, shuffle=True, random_state=0).split(X, y, images))
        return LogisticRegressionCV(Cs=list(C_GRID), cv=splits, scoring="neg_log_loss", max_iter=2000).fit(X, y)


def fit_head(kind, features: np.ndarray, targets: np.ndarray, masks: np.ndarray, c: float):
    """(W (heads, D), b (heads,)) of a logistic regression on ``features`` (n, 2, D), in the raw feature
    space: the standardisation is folded in. Multi-label: one regression per label on its known images."""
    n, views, dim = features.shape
    X = features.reshape(n * views, dim)
    images = np.repeat(np.arange(n), views)
    # A channel that barely varies on these images (a ReLU that is almost never on) is not blown up by
    # the standardisation: its scale is floored at a tenth of the median channel's. Unfloored, an image
    # that does light it (a test image, or an augmented one when fine-tuning from this head) gets
    # logits in the hundreds: LP-FT's first epoch had a loss of 12 on BrEaST.
    spread = X.std(0)
    mean, std = X.mean(0), np.maximum(spread, 0.1 * np.median(spread) + 1e-8)
    Z = (X - mean) / std
    heads = targets.shape[1]
    W, b = np.zeros((heads, dim)), np.zeros(heads)
    if kind.probe_activation == "softmax":
        y = np.repeat(targets.argmax(1), views)
        b[:] = -30.0                                  # a class absent from this fold's training images
        if len(np.unique(y)) < 2:
            b[y[0]] = 0.0
            return W, b
        model = _regression(Z, y, images, c)
        for row, cls in enumerate(model.classes_):
            if len(model.classes_) == 2:              # sklearn keeps one row for two classes
                W[cls], b[cls] = (model.coef_[0], model.intercept_[0]) if row == 1 else (0.0, 0.0)
            else:
                W[cls], b[cls] = model.coef_[row], model.intercept_[row]
    else:
        for j in range(heads):
            known = np.repeat(masks[:, j] > 0, views)
            y = np.repeat(targets[:, j], views)[known].astype(int)
            if len(np.unique(y)) < 2:                 # one value only: predict its rate
                rate = np.clip(y.mean() if y.size else 0.5, 0.02, 0.98)
                b[j] = np.log(rate / (1 - rate))
                continue
            model = _regression(Z[known], y, images[known], c)
            W[j], b[j] = model.coef_[0], model.intercept_[0]
    W = W / std
    return W, b - W @ mean


def head_probs(kind, W: np.ndarray, b: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Probabilities averaged over the views, as run.py's hflip TTA averages them."""
    logits = torch.from_numpy(features @ W.T + b)     # (n, views, heads)
    return kind.probabilities(logits).mean(1).numpy()


def probe_folds(task, cfg: TrainConfig, features: np.ndarray, targets: np.ndarray, masks: np.ndarray,
                fold_ids: np.ndarray, saved: Path | None = None) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """The probe's head for every fold, fitted on that fold's training images; kept in ``saved`` and
    read back from it when the features, labels, folds and C are the same (parallel jobs, resumed runs)."""
    digest = hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in (features, targets, masks, fold_ids))
                            + repr(cfg.probe_c).encode()).hexdigest()
    if saved is not None and saved.is_file():
        with np.load(saved) as stored:
            if str(stored["digest"]) == digest:
                return {int(k): (stored[f"W{k}"], stored[f"b{k}"]) for k in np.unique(fold_ids)}
    heads = {}
    for fold in np.unique(fold_ids):
        train = fold_ids != fold
        heads[int(fold)] = fit_head(task.kind, features[train], targets[train], masks[train], cfg.probe_c)
    if saved is not None:
        arrays = {f"{name}{k}": value for k, (W, b) in heads.items() for name, value in (("W", W), ("b", b))}
        with atomic_path(saved) as tmp, open(tmp, "wb") as f:
            np.savez(f, digest=digest, **arrays)
    return heads


def probe_network(cfg: TrainConfig, n_heads: int, W: np.ndarray, b: np.ndarray):
    """The probe as a network: the frozen backbone with the regression as its classifier."""
    net = frozen_backbone(cfg, n_heads)
    set_head(net, W, b)
    return net


def run_probe(task, cfg: TrainConfig, cache, hashes, labels, targets, masks, fold_ids, run_dir: Path, device) -> dict:
    """The linear probe on the run's folds: its heads per fold, and its OOF probabilities saved in
    RUN_DIR/probe/ for the run's report. With ``recipe: probe`` the probe networks are the run's folds."""
    run = RunFolder(run_dir)
    started = time.perf_counter()
    features = features_for(cfg, len(task.heads), cache.eval, hashes, device)
    heads = probe_folds(task, cfg, features, targets, masks, fold_ids, run.probe_heads)
    oof = np.zeros((len(cache), len(task.heads)))
    for fold, (W, b) in heads.items():
        oof[fold_ids == fold] = head_probs(task.kind, W, b, features[fold_ids == fold])
    save_array(run.probe_oof, oof)
    log.info("%s: linear probe on %s features fitted on %d folds in %.1fs", task.name, cfg.backbone, len(heads),
             time.perf_counter() - started)
    if cfg.recipe == "probe":
        for fold in selected_folds(cfg):
            folder, val = run.fold(fold), fold_ids == fold
            if folder.is_done():
                continue
            score = validation_score(task, labels[val], oof[val])
            save_checkpoint(folder.best, probe_network(cfg, len(task.heads), *heads[fold]),
                            checkpoint_meta(task, cfg, fold, 0, score))
            folder.save_oof(oof[val])
            folder.write_history([])
            folder.finish(done_record(fold, selected_epoch=0, score=score, epochs_run=0, n_val=int(val.sum()),
                                      precision="fp32", seconds_per_epoch=None))
    return heads
