"""Boxes as the detection kind holds them, and the geometry every layer shares: the checks a reader runs
on a file's boxes, the TTA un-flip, the fusion of fold and TTA views, and boxes from a class-id mask.

One convention everywhere (readers, fusion, metric, outputs): an image's boxes are a float (N, 4) array
of ``x1, y1, x2, y2`` in absolute pixels of the image as it is stored (upright, its own size), with
``x2``/``y2`` exclusive, as COCO's ``x + w``: a box of the single pixel (row 3, column 5) is
``(5, 3, 6, 4)``, and a box that reaches the right edge has ``x2 == width``. Labels are an int (N,) array
of 0-based indices into the task's ``classes``; scores a float (N,) array. An image without objects has
N = 0, a (0, 4) array: a value like any other, never a special case. Plain numpy and OpenCV; the fusion
imports ``ensemble-boxes`` (WBF) or torchvision (NMS) when it is called.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import cv2
import numpy as np

METHODS = ("wbf", "nms")
# An overshoot of the image's edge smaller than this is float noise (a YOLO file's centre and size, rounded
# to 6 decimals and multiplied out), clipped without a warning; a box thinner than this carries nothing.
EDGE_TOLERANCE = 0.01  # pixels
# How WBF scores a fused box: the (weighted) mean score of the boxes in its cluster times the (weighted)
# share of the views that put a box there. See ``fuse``.
WBF_CONF_TYPE = "box_and_model_avg"


class Detections(NamedTuple):
    """One image's predicted boxes: (N, 4) xyxy pixels, (N,) scores, (N,) 0-based class indices."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


def as_boxes(boxes) -> np.ndarray:
    """``boxes`` as a float64 (N, 4) array; an empty input of any shape is (0, 4)."""
    array = np.asarray(boxes, dtype=np.float64)
    if array.size == 0:
        return np.zeros((0, 4))
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"boxes should be an (N, 4) array of x1, y1, x2, y2, got shape {array.shape}")
    return array


def as_detections(boxes, scores, labels) -> Detections:
    """The three arrays of one image's predictions as float64 / float64 / int64, their lengths checked."""
    boxes = as_boxes(boxes)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if not len(boxes) == len(scores) == len(labels):
        raise ValueError(f"{len(boxes)} boxes, {len(scores)} scores and {len(labels)} labels: one of each per box")
    return Detections(boxes, scores, labels)


def empty_detections() -> Detections:
    return Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))


@dataclass
class CheckedBoxes:
    """A file's boxes after ``check_boxes``: the usable ones (clipped to the image) and what was said about
    the others, one line each. ``problems`` are errors (the reader reports them all and stops); ``dropped``
    and ``clipped`` are warnings the run's summary counts."""

    boxes: np.ndarray
    labels: np.ndarray
    dropped: list[str] = field(default_factory=list)
    clipped: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def check_boxes(boxes, labels, width: int, height: int, n_classes: int, where,
                class_names: Sequence[str] | None = None) -> CheckedBoxes:
    """What a careful user wants done with the boxes a file gives for one image of ``width`` x ``height``:

    * a box of zero width or height carries nothing: dropped, with a warning;
    * a box partly outside the image: clipped to it, with a warning (within ``EDGE_TOLERANCE``, silently);
    * errors: a coordinate that is not a finite number, an unknown class index, a box wholly outside the
      image, and corners given the wrong way round (``x2 < x1`` or ``y2 < y1``). Those are not swapped back:
      they are the mark of a file read in the wrong coordinate format (``xywh`` read as ``xyxy``, where a
      width is smaller than the corner's x), and a silent swap would train on wrong boxes.

    ``where`` names the file in every message; ``class_names`` (optional) names the classes in them.
    """
    boxes, labels = as_boxes(boxes), np.asarray(labels).reshape(-1)
    if len(labels) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes and {len(labels)} labels: one label per box")
    out = CheckedBoxes(np.zeros((0, 4)), np.zeros(0, np.int64))
    kept, kept_labels = [], []
    for i, (box, label) in enumerate(zip(boxes, labels), 1):
        known = _is_index(label, n_classes)
        name = f"class {class_names[int(label)]!r}" if known and class_names is not None else f"class {_text(label)}"
        said = f"{where}: box {i} ({', '.join(f'{v:g}' for v in box)}) of {name}"
        if not known:
            out.problems.append(f"{said}: unknown class, the classes are 0..{n_classes - 1}")
        if not np.isfinite(box).all():
            out.problems.append(f"{said}: a coordinate is not a finite number")
            continue
        x1, y1, x2, y2 = box
        if x2 < x1 - EDGE_TOLERANCE or y2 < y1 - EDGE_TOLERANCE:
            out.problems.append(f"{said}: {'x2 < x1' if x2 < x1 - EDGE_TOLERANCE else 'y2 < y1'}; corners must "
                                "be top-left then bottom-right (is the file's box format xyxy or xywh?)")
            continue
        if x2 - x1 <= EDGE_TOLERANCE or y2 - y1 <= EDGE_TOLERANCE:
            out.dropped.append(f"{said}: zero {'width' if x2 - x1 <= EDGE_TOLERANCE else 'height'}, dropped")
            continue
        if x1 >= width or y1 >= height or x2 <= 0 or y2 <= 0:
            out.problems.append(f"{said}: wholly outside the {width}x{height} image")
            continue
        inside = np.clip(box, 0, [width, height, width, height])
        if np.abs(inside - box).max() > EDGE_TOLERANCE:
            out.clipped.append(f"{said}: partly outside the {width}x{height} image, clipped to "
                               f"({', '.join(f'{v:g}' for v in inside)})")
        if known:
            kept.append(inside)
            kept_labels.append(int(label))
    if kept:
        out.boxes, out.labels = np.array(kept), np.array(kept_labels, np.int64)
    return out


def _text(label) -> str:
    try:
        return f"{float(label):g}"
    except (TypeError, ValueError):
        return repr(label)


def _is_index(label, n_classes: int) -> bool:
    try:
        value = float(label)
    except (TypeError, ValueError):
        return False
    return value.is_integer() and 0 <= value < n_classes


def flip_boxes(boxes, width: int, height: int, horizontal: bool, vertical: bool) -> np.ndarray:
    """The boxes of an image flipped left-right and/or top-bottom, in the flipped image: its own inverse,
    so it also puts a flipped TTA view's boxes back into the original geometry. With x2 exclusive, pixel
    column c goes to ``width - 1 - c``, so ``[x1, x2)`` goes to ``[width - x2, width - x1)``."""
    boxes = as_boxes(boxes).copy()
    if horizontal:
        boxes[:, [0, 2]] = width - boxes[:, [2, 0]]
    if vertical:
        boxes[:, [1, 3]] = height - boxes[:, [3, 1]]
    return boxes


def fuse(views, width: int, height: int, method: str = "wbf", iou: float = 0.55, skip: float = 0.0,
         weights=None) -> Detections:
    """One image's predictions from several views (one per fold and TTA view, each already in the original
    geometry, each a (boxes, scores, labels) triple) fused into one set, sorted by score, clipped to the
    image. Boxes scored below ``skip`` are left out first; a view without boxes still counts as a view.
    The fusion sees the boxes divided by the image's size: ``ensemble-boxes`` works in [0, 1] (and in
    float32, so coordinates come back within 1e-7 of the image's size).

    * ``wbf``, Weighted Boxes Fusion: the boxes of a class that overlap at IoU > ``iou`` form a cluster
      whose coordinates are their score-weighted mean. Its score is ``WBF_CONF_TYPE`` ("box_and_model_avg"):
      the mean score of the cluster's boxes times the share of the views that found it (weights, when
      given, weigh both). So a box every view finds keeps its mean score whatever the number of views, and
      one found by 1 of 10 views scores a tenth: a score threshold tuned out of fold, where an image has one
      fold's views, keeps its meaning for the test images, which have every fold's. The package's default
      ("avg") divides by the count of boxes capped at the count of views, which overrates a view that put
      two boxes in one cluster; "max" rises with the number of views. Even with one view WBF is not the
      identity: that view's own overlapping boxes of a class are merged, scored their mean.
    * ``nms``: per class, the highest-scored box is kept and those overlapping it at IoU > ``iou`` removed
      (torchvision's ``batched_nms``, see ``_nms``); the scores are the boxes' own (times weight / the
      largest weight), so they rise with the number of views.
    """
    if method not in METHODS:
        raise ValueError(f"fusion method {method!r}: one of {', '.join(METHODS)}")
    if weights is not None and len(weights) != len(views):
        raise ValueError(f"{len(weights)} weights for {len(views)} views")
    scale = np.array([width, height, width, height], dtype=np.float64)
    normalised = [_normalised(as_detections(*view), scale, skip) for view in views]
    if not sum(len(view.boxes) for view in normalised):
        return empty_detections()
    if method == "wbf":
        # Imported here: numba, which ensemble-boxes imports, costs half a second that only fusion needs.
        from ensemble_boxes import weighted_boxes_fusion
        boxes, scores, labels = weighted_boxes_fusion(
            [v.boxes for v in normalised], [v.scores for v in normalised], [v.labels for v in normalised],
            weights=None if weights is None else list(weights), iou_thr=iou, skip_box_thr=skip,
            conf_type=WBF_CONF_TYPE)
    else:
        boxes, scores, labels = _nms(normalised, np.ones(len(views)) if weights is None else weights, iou)
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    boxes = np.clip(np.asarray(boxes, np.float64)[order] * scale, 0, scale)
    return Detections(boxes, np.asarray(scores, np.float64)[order], np.asarray(labels)[order].astype(np.int64))


def _nms(views: list[Detections], weights, iou: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class-wise NMS over the views pooled, each view's scores times its weight / the largest weight.
    torchvision's, not ensemble-boxes' ``nms``: that one is compiled by numba on its first call, 9 s of
    a busy 2-core machine in every process that fuses, for the same result (IoU > ``iou`` removed)."""
    import torch
    from torchvision.ops import batched_nms
    relative = np.asarray(weights, np.float64) / max(weights)
    boxes = np.concatenate([v.boxes for v in views])
    scores = np.concatenate([v.scores * w for v, w in zip(views, relative)])
    labels = np.concatenate([v.labels for v in views])
    keep = batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), iou).numpy()
    return boxes[keep], scores[keep], labels[keep]


def _normalised(view: Detections, scale: np.ndarray, skip: float) -> Detections:
    """A view's boxes in [0, 1], those scored below ``skip`` and those of no area inside the image left
    out (ensemble-boxes would warn about each, or print)."""
    boxes = np.clip(view.boxes / scale, 0, 1)
    keep = (view.scores >= skip) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return Detections(boxes[keep], view.scores[keep], view.labels[keep])


def boxes_from_mask(ids, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One box per 8-connected component of each class in a class-id mask ((H, W) ints, 0 background,
    1..n_classes): (boxes (N, 4) in pixels, x2/y2 exclusive, labels (N,) 0-based), by class, then in the
    order OpenCV numbers the components (the raster order of their first pixel)."""
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"boxes_from_mask needs an (H, W) class-id mask, got shape {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() > n_classes):
        raise ValueError(f"class ids should be 0..{n_classes}, the mask holds {ids.min()}..{ids.max()}")
    boxes, labels = [np.zeros((0, 4))], [np.zeros(0, np.int64)]
    for c in range(1, n_classes + 1):
        count, _, stats, _ = cv2.connectedComponentsWithStats((ids == c).astype(np.uint8), connectivity=8)
        x, y = stats[1:, cv2.CC_STAT_LEFT], stats[1:, cv2.CC_STAT_TOP]
        boxes.append(np.stack([x, y, x + stats[1:, cv2.CC_STAT_WIDTH], y + stats[1:, cv2.CC_STAT_HEIGHT]], 1))
        labels.append(np.full(count - 1, c - 1, np.int64))
    return np.concatenate(boxes).astype(np.float64), np.concatenate(labels)


# Padded rows: how a list of boxes of any length per image travels as an array (model.detector's contract).
# A prediction row is x1, y1, x2, y2, score, class (an empty row: score 0, class -1); a truth row is class
# (-1: padding), x1, y1, x2, y2.

def detections(rows: np.ndarray) -> Detections:
    """The boxes of one image's (K, 6) padded rows as model.boxes.Detections (the empty rows left out)."""
    rows = np.asarray(rows, np.float64)
    rows = rows[(rows[:, 5] >= 0) & (rows[:, 4] > 0)]
    return Detections(rows[:, :4], rows[:, 4], rows[:, 5].astype(np.int64))


def pad(found: Detections, k: int) -> np.ndarray:
    """Detections as (k, 6) padded rows, the highest-scored first."""
    out = np.zeros((k, 6), np.float32)
    out[:, 5] = -1
    order = np.argsort(-found.scores, kind="stable")[:k]
    n = len(order)
    out[:n, :4], out[:n, 4], out[:n, 5] = found.boxes[order], found.scores[order], found.labels[order]
    return out


def true_boxes(labels: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(boxes, classes) per image from padded (N, M, 5) truth."""
    labels = np.asarray(labels, np.float64)
    return [(rows[rows[:, 0] >= 0, 1:], rows[rows[:, 0] >= 0, 0].astype(np.int64)) for rows in labels]


def in_pixels(found: Detections, shape) -> Detections:
    """Relative Detections in an image of (height, width) pixels."""
    height, width = shape
    return Detections(found.boxes * np.array([width, height, width, height], np.float64), found.scores, found.labels)
