"""The detection metric: what the field reports, computed by pycocotools' ``COCOeval`` (the official COCO
evaluation) wherever it has the number, so a user's own pycocotools scoring of the same boxes agrees.

* ``map``: AP averaged over IoU 0.50:0.05:0.95 and over the classes; ``map50`` at IoU 0.5; ``ap`` and
  ``ap50`` per class name; ``recall``: COCO's AR at the last ``maxDets`` (the most boxes per image and class
  that count). COCO's area ranges are not reported: its "small" and "large" are for photos, not for cells.
  These use every predicted box whatever its score: AP is the area under the precision-recall curve, which
  runs over all the thresholds at once.
* ``f1``: the mean over images of each image's F1 at the score threshold, a box counting as found at
  IoU >= 0.5 (see ``image_f1``).
* the image-level answer "has any object": ``sensitivity`` and ``specificity`` of "some box at or above
  its class's threshold", and ``auc`` of each image's highest box score (0 for an image without a box).
* ``pr_curves``: per class, COCO's interpolated precision at its 101 recall points, at IoU 0.5, to plot.

Boxes follow ``model.boxes`` (xyxy pixels, x2 exclusive), which is COCO's ``[x, y, w, h]`` with
``w = x2 - x1``: pycocotools' IoU takes them as they are, with no +1.
"""
from __future__ import annotations

import contextlib
import io

import numpy as np

from .boxes import as_boxes, as_detections
from .errors import ScoreError
from .metric import binary_rates

MAX_DETS = 100  # COCO's; the most boxes per image and class that count (raise it for denser images)
MATCH_IOU = 0.5  # the IoU at which f1 counts a box as found


def detection_scores(truth, preds, classes, threshold=0.5, max_dets: int = MAX_DETS) -> dict:
    """The scores of ``preds`` (a list, one (boxes, scores, labels) per image) against ``truth`` (a list in
    the same order, one (boxes, labels) per image), labels being indices into ``classes``; ``threshold`` is
    one score threshold, or one per class, for f1 and the image-level answer.

    ``auc`` is None when every image holds an object, or none does. A class with no true box in these
    images raises ScoreError: pycocotools would give it -1 and quietly leave it out of the mean, and the mAP
    would then be over fewer classes than the task has."""
    if len(truth) != len(preds):
        raise ValueError(f"{len(truth)} images of truth, {len(preds)} of predictions")
    classes = list(classes)
    thresholds = np.broadcast_to(np.asarray(threshold, np.float64), (len(classes),))
    truth = [(as_boxes(b), np.asarray(l, np.int64).reshape(-1)) for b, l in truth]
    preds = [as_detections(*p) for p in preds]
    for what, labels in (("true", [l for _, l in truth]), ("predicted", [p.labels for p in preds])):
        labels = np.concatenate([*labels, np.zeros(0, np.int64)])
        if ((labels < 0) | (labels >= len(classes))).any():
            raise ValueError(f"{what} labels should be class indices 0..{len(classes) - 1}")
    counts = np.bincount(np.concatenate([l for _, l in truth] + [np.zeros(0, np.int64)]), minlength=len(classes))
    absent = [name for name, n in zip(classes, counts) if not n]
    if absent:
        raise ScoreError(f"no true box of class {', '.join(map(repr, absent))} in the {len(truth)} image(s) "
                         "scored, so its AP, and the mAP, cannot be computed: score images that hold every class")
    precision, recall, recall_points = _coco_eval(truth, preds, len(classes), max_dets)
    ap = precision.mean(axis=(0, 1))          # (K,): over the IoU thresholds and the recall points
    ap50 = precision[0].mean(axis=0)
    out = {"map": float(ap.mean()), "map50": float(ap50.mean()),
           "ap": {name: float(v) for name, v in zip(classes, ap)},
           "ap50": {name: float(v) for name, v in zip(classes, ap50)},
           "recall": float(recall.mean()),
           "f1": float(np.mean([image_f1(t, p, thresholds) for t, p in zip(truth, preds)]))}
    has_object = np.array([len(boxes) > 0 for boxes, _ in truth])
    said = np.array([bool((p.scores >= thresholds[p.labels]).any()) for p in preds])
    highest = np.array([p.scores.max() if len(p.scores) else 0.0 for p in preds])
    rates = binary_rates(has_object.astype(int), said.astype(int))
    out["sensitivity"], out["specificity"] = rates["sensitivity"], rates["specificity"]
    from sklearn.metrics import roc_auc_score  # here: 1 s of imports that run.py, which never scores, skips
    out["auc"] = float(roc_auc_score(has_object, highest)) if 0 < has_object.sum() < len(has_object) else None
    out["pr_curves"] = {name: {"recall": recall_points.tolist(), "precision": precision[0, :, k].tolist()}
                        for k, name in enumerate(classes)}
    return out


def _coco_eval(truth, preds, n_classes: int, max_dets: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """COCOeval's precision (IoU thresholds, recall points, classes) and recall (IoU thresholds, classes),
    at area "all" and ``max_dets``, and its recall points. The results are built like the ground truth, not
    by ``COCO.loadRes``, which fails on an empty list (a model that found nothing scores 0, it is no error)."""
    from pycocotools.cocoeval import COCOeval  # imported here, as sklearn is: run.py never scores
    images = [{"id": i} for i in range(1, len(truth) + 1)]
    categories = [{"id": k + 1, "name": str(k + 1)} for k in range(n_classes)]
    gt, dt = [], []
    for image_id, ((boxes, labels), p) in enumerate(zip(truth, preds), 1):
        gt += [_annotation(box, label, image_id) for box, label in zip(boxes, labels)]
        dt += [_annotation(box, label, image_id, score) for box, score, label in zip(*p)]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco_gt, coco_dt = _coco(images, categories, gt), _coco(images, categories, dt)
        evaluation = COCOeval(coco_gt, coco_dt, iouType="bbox")
        # Summaries of pycocotools read maxDets=100 however it is set; the arrays below are read directly.
        evaluation.params.maxDets = [1, 10, max_dets]
        evaluation.evaluate()
        evaluation.accumulate()
    return (evaluation.eval["precision"][:, :, :, 0, -1], evaluation.eval["recall"][:, :, 0, -1],
            evaluation.params.recThrs)


def _annotation(box, label, image_id: int, score: float | None = None) -> dict:
    x1, y1, x2, y2 = (float(v) for v in box)
    out = {"image_id": image_id, "category_id": int(label) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
           "area": (x2 - x1) * (y2 - y1), "iscrowd": 0}
    return out if score is None else {**out, "score": float(score)}


def _coco(images, categories, annotations):
    from pycocotools.coco import COCO
    coco = COCO()
    coco.dataset = {"images": images, "categories": categories,
                    "annotations": [{**a, "id": i} for i, a in enumerate(annotations, 1)]}
    coco.createIndex()
    return coco


def image_f1(truth, pred, thresholds) -> float:
    """One image's F1 over its classes: its boxes at or above their class's threshold, matched greedily by
    score to the unmatched true box of their class with the highest IoU, if that IoU >= ``MATCH_IOU``.
    1.0 for an image with neither true nor kept boxes (nothing to find, nothing claimed). Written here:
    pycocotools pools every image into one curve and has no per-image F1 at a threshold."""
    true_boxes, true_labels = truth
    keep = pred.scores >= thresholds[pred.labels]
    boxes, scores, labels = pred.boxes[keep], pred.scores[keep], pred.labels[keep]
    if not len(true_boxes) and not len(boxes):
        return 1.0
    hits = 0
    for c in np.union1d(true_labels, labels):
        found = true_boxes[true_labels == c]
        mine = boxes[labels == c][np.argsort(-scores[labels == c], kind="stable")]
        overlaps, free = box_iou(mine, found), np.ones(len(found), bool)
        for row in overlaps:
            candidates = np.where(free & (row >= MATCH_IOU), row, -1.0)
            if len(found) and candidates.max() >= 0:
                free[candidates.argmax()] = False
                hits += 1
    return 2 * hits / (len(true_boxes) + len(boxes))


def box_iou(a, b) -> np.ndarray:
    """The (len(a), len(b)) IoU of two sets of xyxy boxes."""
    a, b = as_boxes(a), as_boxes(b)
    width = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    height = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = width * height
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
