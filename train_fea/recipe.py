"""What is particular to fea: a masked, task-weighted binary loss with an optional soft-F1 term.

Default feature weights are "auto": w_j = 1 / sqrt(p_j (1 - p_j)), p_j the feature's positive rate
among the training images whose label is known, scaled to mean 1. A rarer feature (direction and shape
in the competition, 18-19% positive) gets more weight because its F1, 40% of its score, is the part an
unweighted loss neglects; a balanced one (calcification, 48%) gets less. Unknown labels are masked out
of every term.

With task_weighting=uncertainty each feature also gets a learned log-variance s_j (Kendall, Gal and
Cipolla, 2018): its term becomes exp(-s_j) * L_j + s_j / 2, so the network itself down-weights the
features it finds noisiest. The s_j are trained with the network and saved with the resume state.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.tasks import FEA
from model.training.config import TrainConfig
from model.training.spec import TaskSpec

DEFAULTS = TrainConfig(imbalance="none", feature_weights=["auto"], soft_f1_weight=0.1)


def auto_feature_weights(targets: np.ndarray, masks: np.ndarray) -> np.ndarray:
    known = np.maximum(masks.sum(0), 1.0)
    rate = np.clip((targets * masks).sum(0) / known, 0.02, 0.98)
    weights = 1.0 / np.sqrt(rate * (1 - rate))
    return weights / weights.mean()


class MaskedMultiTaskLoss(nn.Module):
    def __init__(self, smoothing: float, feature_weights: np.ndarray, soft_f1_weight: float,
                 learned: bool = False):
        super().__init__()
        self.smoothing, self.soft_f1_weight = smoothing, soft_f1_weight
        self.register_buffer("weights", torch.as_tensor(feature_weights, dtype=torch.float32))
        self.log_vars = nn.Parameter(torch.zeros(len(feature_weights))) if learned else None

    def forward(self, logits, targets, masks):
        smoothed = targets * (1 - self.smoothing) + self.smoothing / 2
        bce = F.binary_cross_entropy_with_logits(logits, smoothed, reduction="none") * masks
        per_feature = bce.sum(0) / masks.sum(0).clamp(min=1)
        if self.log_vars is not None:
            per_feature = torch.exp(-self.log_vars) * per_feature + 0.5 * self.log_vars
        loss = (self.weights * per_feature).sum() / self.weights.sum()
        if self.soft_f1_weight > 0:
            p, y = torch.sigmoid(logits) * masks, targets * masks
            soft_f1 = 2 * (p * y).sum(0) / (p.sum(0) + y.sum(0)).clamp(min=1e-6)
            has_positive = (y.sum(0) > 0).float()  # F1 is undefined for a feature with no positive here
            loss = loss + self.soft_f1_weight * (self.weights * has_positive * (1 - soft_f1)).sum() / self.weights.sum()
        return loss


def make_loss(cfg: TrainConfig, targets: np.ndarray, masks: np.ndarray) -> nn.Module:
    if cfg.feature_weights == ["auto"]:
        weights = auto_feature_weights(targets, masks)
    elif len(cfg.feature_weights) == FEA.num_outputs:
        weights = np.asarray(cfg.feature_weights, dtype=np.float64)
    else:
        raise ValueError(f"feature_weights must be 'auto' or {FEA.num_outputs} numbers ({', '.join(FEA.heads)})")
    return MaskedMultiTaskLoss(cfg.label_smoothing, weights, cfg.soft_f1_weight, cfg.task_weighting == "uncertainty")


SPEC = TaskSpec(FEA, DEFAULTS, make_loss)
