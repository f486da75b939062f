"""The losses, one per task kind (model.kinds picks the one a task needs).

Single-label: cross-entropy on soft (CutMix-mixed) targets with label smoothing and optional class weights
1/sqrt(count), a milder correction than 1/count, which over-predicts the rarest class on a few hundred
images.

Multi-label: a masked binary cross-entropy per label, weighted per label, with an optional soft-F1 term.
The automatic label weights are w_j = 1 / sqrt(p_j (1 - p_j)), p_j the label's positive rate among the
training images whose label is known, scaled to mean 1: a rare label (18-19% positive for BI-RADS
direction and shape) gets more weight, because its F1, 40% of its competition score, is the part an
unweighted loss neglects; a balanced one (calcification, 48%) gets less. Unknown labels are masked out of
every term. With task_weighting=uncertainty each label also gets a learned log-variance s_j (Kendall, Gal
and Cipolla, 2018): its term becomes exp(-s_j) * L_j + s_j / 2, so the network itself down-weights the
labels it finds noisiest.

Segmentation: segmentation-models-pytorch's Dice loss (over the whole batch, so the many empty slices of a
volume do not each count as a perfect or a failed Dice) plus its BCE (one class) or cross-entropy
(background and several classes), as nnU-Net and most Kaggle segmentation solutions combine them.

Detection: the detector's own (model.training.losses.DetectorLoss).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def inverse_sqrt_frequency(targets: np.ndarray) -> np.ndarray:
    """Per-class weight 1/sqrt(count), scaled so that the average training image weighs 1."""
    counts = np.maximum(targets.sum(0), 1.0)
    weights = counts ** -0.5
    return weights * len(targets) / (counts * weights).sum()


def auto_label_weights(targets: np.ndarray, masks: np.ndarray) -> np.ndarray:
    known = np.maximum(masks.sum(0), 1.0)
    rate = np.clip((targets * masks).sum(0) / known, 0.02, 0.98)
    weights = 1.0 / np.sqrt(rate * (1 - rate))
    return weights / weights.mean()


class SoftTargetCrossEntropy(nn.Module):
    def __init__(self, smoothing: float, class_weights: np.ndarray | None, num_classes: int):
        super().__init__()
        self.smoothing = smoothing
        weights = torch.ones(num_classes) if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("weights", weights)

    def forward(self, logits, targets, masks=None):
        smoothed = targets * (1 - self.smoothing) + self.smoothing / logits.shape[1]
        per_image = -(smoothed * F.log_softmax(logits, dim=1) * self.weights).sum(1)
        return per_image.sum() / (targets * self.weights).sum().clamp(min=1e-6)


class MaskedMultiLabelLoss(nn.Module):
    def __init__(self, smoothing: float, label_weights: np.ndarray, soft_f1_weight: float, learned: bool = False):
        super().__init__()
        self.smoothing, self.soft_f1_weight = smoothing, soft_f1_weight
        self.register_buffer("weights", torch.as_tensor(label_weights, dtype=torch.float32))
        self.log_vars = nn.Parameter(torch.zeros(len(label_weights))) if learned else None

    def forward(self, logits, targets, masks):
        smoothed = targets * (1 - self.smoothing) + self.smoothing / 2
        bce = F.binary_cross_entropy_with_logits(logits, smoothed, reduction="none") * masks
        per_label = bce.sum(0) / masks.sum(0).clamp(min=1)
        if self.log_vars is not None:
            per_label = torch.exp(-self.log_vars) * per_label + 0.5 * self.log_vars
        loss = (self.weights * per_label).sum() / self.weights.sum()
        if self.soft_f1_weight > 0:
            p, y = torch.sigmoid(logits) * masks, targets * masks
            soft_f1 = 2 * (p * y).sum(0) / (p.sum(0) + y.sum(0)).clamp(min=1e-6)
            has_positive = (y.sum(0) > 0).float()  # F1 is undefined for a label with no positive here
            loss = loss + self.soft_f1_weight * (self.weights * has_positive * (1 - soft_f1)).sum() / self.weights.sum()
        return loss


class SegmentationLoss(nn.Module):
    """Dice + BCE (one class: one logit map) or Dice + cross-entropy (C classes: C + 1 maps, background
    first); targets are (B, H, W) class ids."""

    def __init__(self, n_classes: int, dice_weight: float, smoothing: float = 0.0):
        super().__init__()
        from segmentation_models_pytorch import losses
        self.binary, self.dice_weight = n_classes == 1, dice_weight
        mode = losses.BINARY_MODE if self.binary else losses.MULTICLASS_MODE
        self.dice = losses.DiceLoss(mode, from_logits=True)
        self.pixel = losses.SoftBCEWithLogitsLoss(smooth_factor=smoothing or None) if self.binary \
            else losses.SoftCrossEntropyLoss(smooth_factor=smoothing)

    def forward(self, logits, targets, masks=None):
        if self.binary:
            truth = targets.unsqueeze(1).float()
            return self.pixel(logits, truth) + self.dice_weight * self.dice(logits, truth)
        return self.pixel(logits, targets.long()) + self.dice_weight * self.dice(logits, targets.long())


class DetectorLoss(nn.Module):
    """Detection: the detector's own loss, which torchvision computes inside its forward pass from the
    targets (FCOS: focal loss, GIoU and centre-ness; RetinaNet: focal loss and L1; Faster R-CNN: the RPN's
    and the box head's); ``model.kinds.detection.training_outputs`` hands it here unchanged."""

    def forward(self, loss: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return loss
