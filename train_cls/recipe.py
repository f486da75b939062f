"""What is particular to cla: class-imbalance handling and a soft-target cross-entropy."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.tasks import CLA
from model.training.config import TrainConfig
from model.training.spec import TaskSpec

DEFAULTS = TrainConfig(imbalance="weights", soft_f1_weight=0.0)


def inverse_sqrt_frequency(targets: np.ndarray) -> np.ndarray:
    """Per-class weight 1/sqrt(count), scaled so the average training image weighs 1: a milder
    correction than 1/count, which over-predicts the rarest class on a few hundred images."""
    counts = np.maximum(targets.sum(0), 1.0)
    weights = counts ** -0.5
    return weights * len(targets) / (counts * weights).sum()


class SoftTargetCrossEntropy(nn.Module):
    """Cross-entropy on soft (CutMix-mixed) targets with label smoothing and optional class weights."""

    def __init__(self, smoothing: float, class_weights: np.ndarray | None = None, num_classes: int = 6):
        super().__init__()
        self.smoothing = smoothing
        weights = torch.ones(num_classes) if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("weights", weights)

    def forward(self, logits, targets, masks=None):
        smoothed = targets * (1 - self.smoothing) + self.smoothing / logits.shape[1]
        per_image = -(smoothed * F.log_softmax(logits, dim=1) * self.weights).sum(1)
        return per_image.sum() / (targets * self.weights).sum().clamp(min=1e-6)


def make_loss(cfg: TrainConfig, targets: np.ndarray, masks: np.ndarray) -> nn.Module:
    weights = inverse_sqrt_frequency(targets) if cfg.imbalance in ("weights", "both") else None
    return SoftTargetCrossEntropy(cfg.label_smoothing, weights, CLA.num_outputs)


def sample_weights(cfg: TrainConfig, targets: np.ndarray) -> np.ndarray | None:
    if cfg.imbalance not in ("sampler", "both"):
        return None
    return targets @ inverse_sqrt_frequency(targets)


SPEC = TaskSpec(CLA, DEFAULTS, make_loss, sample_weights)
