"""Segmentation masks: reading them, the decision rule that turns probability maps into masks, and the
scores the field reports (Dice, IoU, pixel sensitivity and specificity, per image and per volume).

A mask image holds one value per pixel: 0 is background and each foreground class has its own value
(a task file's ``classes: {tumour: 255}``). In memory a mask is a uint8 (H, W) array of class ids:
0 for background, 1..C for the task's classes in order.

Conventions, the same everywhere (training, the decision rule, the report and ``model.score``):

* Dice = 2 TP / (2 TP + FP + FN) and IoU = TP / (TP + FP + FN), per foreground class, then the mean
  over classes.
* An empty truth with an empty prediction scores 1.0 (a correct "no lesion"); an empty truth with any
  predicted pixel scores 0.0. Most slices of a volume are empty, so this convention decides how much the
  false positives on them cost.
* Per volume: the pixels of every image of one group (patient) are pooled before Dice is taken, as the
  LGG and BraTS papers report it; the score is the mean over volumes. Without groups every image is its
  own volume, so per-volume and per-image Dice agree.
* Pixel sensitivity and specificity pool every pixel of the set.

Written here rather than taken from a library: MONAI's DiceMetric would bring MONAI for one formula and
its empty-case convention differs (``ignore_empty``), and smp's metrics work on tensors per batch, while
the decision-rule search scores thousands of rules on cached per-image counts.
"""
from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps

from .images import ImageReadError, decode_reason, read_file


class MaskError(ValueError):
    """A mask image that cannot be used; the message names the file and what to do."""


def load_mask(path: str | Path, values: tuple[int, ...]) -> np.ndarray:
    """The (H, W) uint8 class ids of the mask image at ``path``; ``values[c]`` is class c+1's pixel value.

    Raises MaskError naming the file for an unreadable image, a colour mask or an unknown value."""
    try:
        data = read_file(path)
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            # Turned upright by its EXIF orientation, as its image is (model.images): a no-op without one.
            ImageOps.exif_transpose(im, in_place=True)
            # A 1-bit image reads as 0/255; a palette image as its indices (the VOC convention).
            array = np.asarray(im.convert("L") if im.mode == "1" else im)
    except (OSError, ValueError, SyntaxError, ImageReadError, Image.DecompressionBombError) as e:
        raise MaskError(f"{path}: cannot read this mask ({decode_reason(e)}); re-save it as a one-channel PNG or "
                        "TIFF, or remove the image and its mask") from e
    if array.ndim == 3:
        if array.shape[2] in (2, 4):
            array = array[..., : array.shape[2] - 1]  # drop alpha
        if not (array == array[..., :1]).all():
            raise MaskError(f"{path}: a colour mask; save one channel whose values are the class values")
        array = array[..., 0]
    out = np.zeros(array.shape, np.uint8)
    for c, value in enumerate(values, 1):
        out[array == value] = c
    unknown = np.setdiff1d(np.unique(array), (0, *values))
    if unknown.size:
        shown = ", ".join(str(v) for v in unknown[:8].tolist())
        # Values between the declared ones (1, 3, 4 in a 0/255 mask) are what linear or cubic resizing leaves
        # at a lesion's border: the masks are fine but were resized, not the task file wrong.
        between = unknown[(unknown > 0) & (unknown < max(values))] if values else unknown[:0]
        fix = ("the mask looks resized with interpolation (values between the classes' at the borders): resize "
               "masks with nearest-neighbour, or export them again" if between.size >= max(2, unknown.size // 2)
               else "set the task's classes: to the values the masks use")
        raise MaskError(f"{path}: mask value(s) {shown} are neither 0 (background) nor a class value "
                        f"{list(values)}; {fix}")
    return out


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A class-id mask at (height, width), nearest neighbour (class ids never blend)."""
    height, width = size
    if mask.shape[:2] == (height, width):
        return mask
    return cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)


def remove_small(mask: np.ndarray, min_pixels: float) -> np.ndarray:
    """``mask`` without the connected components (8-connected, per class) of fewer than ``min_pixels``."""
    if min_pixels <= 0 or not mask.any():
        return mask
    out = mask.copy()
    for c in np.unique(mask[mask > 0]):
        n, components, stats, _ = cv2.connectedComponentsWithStats((mask == c).astype(np.uint8), connectivity=8)
        small = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] < min_pixels)
        small = small[small > 0]
        if small.size:
            out[np.isin(components, small)] = 0
    return out


def decide_mask(probs: np.ndarray, threshold: float, min_area: float) -> np.ndarray:
    """(H, W) class ids from (C, H, W) foreground probabilities: a pixel is foreground where the
    probability that it shows any class (their sum, one minus the background's) reaches ``threshold``
    (for one class: p >= threshold), and then the likeliest class; components smaller than ``min_area`` (a
    fraction of the image's pixels) are removed."""
    best = probs.argmax(0)
    lesion = probs[0] if len(probs) == 1 else probs.sum(0)
    mask = np.where(lesion >= threshold, best + 1, 0).astype(np.uint8)
    return remove_small(mask, min_area * mask.size)


def pixel_counts(predicted: np.ndarray, truth: np.ndarray, n_classes: int) -> np.ndarray:
    """(N, C, 4) per image and class: true positives, false positives, false negatives, true negatives."""
    predicted, truth = np.asarray(predicted), np.asarray(truth)
    n = len(truth)
    out = np.zeros((n, n_classes, 4), np.int64)
    p_flat, t_flat = predicted.reshape(n, -1), truth.reshape(n, -1)
    pixels = t_flat.shape[1]
    for c in range(1, n_classes + 1):
        p, t = p_flat == c, t_flat == c
        tp = np.count_nonzero(p & t, axis=1)
        p_sum, t_sum = np.count_nonzero(p, axis=1), np.count_nonzero(t, axis=1)
        out[:, c - 1] = np.stack([tp, p_sum - tp, t_sum - tp, pixels - p_sum - t_sum + tp], 1)
    return out


def dice_of(counts: np.ndarray) -> np.ndarray:
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    denominator = 2 * tp + fp + fn
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 1.0)


def iou_of(counts: np.ndarray) -> np.ndarray:
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    denominator = tp + fp + fn
    return np.where(denominator > 0, tp / np.maximum(denominator, 1), 1.0)


def volume_counts(counts: np.ndarray, groups) -> tuple[np.ndarray, np.ndarray]:
    """(the volumes' names, (V, C, 4) pooled counts): every image of one group pooled."""
    names, inverse = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    pooled = np.zeros((len(names), *counts.shape[1:]), np.int64)
    np.add.at(pooled, inverse, counts)
    return names, pooled


def segmentation_scores(counts: np.ndarray, groups=None, metric: str = "dice") -> dict:
    """Every score from per-image ``counts`` (model.masks.pixel_counts) and the images' ``groups``
    (None: each image its own volume). ``score`` is the task's ``metric``: dice (per volume),
    dice_per_image or iou (per image)."""
    n = len(counts)
    if not n:
        nan = float("nan")
        return {"score": nan, "dice": nan, "dice_per_image": nan, "iou": nan, "sensitivity": nan,
                "specificity": nan, "volumes": 0}
    groups = np.arange(n) if groups is None else groups
    _, volumes = volume_counts(counts, groups)
    total = counts.sum(0)                                    # (C, 4) over every pixel
    tp, fp, fn, tn = total[:, 0], total[:, 1], total[:, 2], total[:, 3]
    out = {"dice": float(dice_of(volumes).mean()), "dice_per_image": float(dice_of(counts).mean()),
           "iou": float(iou_of(counts).mean()), "iou_per_volume": float(iou_of(volumes).mean()),
           "sensitivity": float(np.mean(np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), np.nan))),
           "specificity": float(np.mean(tn / np.maximum(tn + fp, 1))), "volumes": int(len(volumes))}
    out["score"] = out[metric]
    return out


def per_class_scores(counts: np.ndarray, groups, heads) -> dict:
    """Dice per volume and per image, IoU, sensitivity of each class."""
    groups = np.arange(len(counts)) if groups is None else groups
    _, volumes = volume_counts(counts, groups)
    out = {}
    for c, name in enumerate(heads):
        total = counts[:, c].sum(0)
        out[name] = {"dice": float(dice_of(volumes[:, c]).mean()), "dice_per_image": float(dice_of(counts[:, c]).mean()),
                     "iou": float(iou_of(counts[:, c]).mean()),
                     "sensitivity": float(total[0] / (total[0] + total[2])) if total[0] + total[2] else float("nan")}
    return out


def image_dice(counts: np.ndarray) -> np.ndarray:
    """(N,) each image's Dice, the mean over classes."""
    return dice_of(counts).mean(1)
