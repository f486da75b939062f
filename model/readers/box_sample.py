"""One image's boxes as a Sample, the same for every reader of boxes (voc, yolo, coco, csv box rows, boxes
from masks) and for every kind of task they feed.

The boxes go through ``model.boxes.check_boxes``: a box of zero width or height is dropped and one partly
outside the image clipped, each with a warning that ``ReadResult.dropped`` / ``clipped`` keep for the run's
summary; an unknown class, a bad number or a box wholly outside the image is a problem. What the task
reads from the kept boxes depends on its kind's ``label_layout``:

* ``boxes`` (detection): ``objects``, and ``labels`` one 0/1 per class, whether the image has a box of it
  (what folds are stratified by);
* ``columns`` (multi-label classification): ``labels``, 1 for each label the image has a box of, else 0;
* ``class`` (single-label classification): the one class of its boxes, ``no_box`` for an image without
  any (a problem when the reader names none), and a problem for boxes of two classes.

A dropped box still gives a classification task its class: its class is known, only its geometry is not.
Every task keeps the kept boxes as ``boxes`` (normalised xc, yc, w, h) for box-guided CutMix too.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..boxes import as_boxes, check_boxes
from .records import ReadResult, Sample, log, relative_key


def box_sample(task, image: Path, root: Path, size: tuple[int, int], boxes, labels, where, group: str | None,
               result: ReadResult, no_box: int | None = None, keep: bool = True) -> Sample | None:
    """Check the boxes of ``image`` (upright ``size`` = width, height) and add its Sample to ``result``.

    ``boxes``: (N, 4) xyxy pixels of the upright image, x2 exclusive; ``labels``: (N,) indices into the
    task's heads; ``where`` names the file they came from in every message. No sample is kept when there
    is a problem or when ``keep`` is False (the caller found one); the image then goes to
    ``result.unlabelled``, so that it is decoded too. Returns the Sample added, or None."""
    width, height = size
    checked = check_boxes(as_boxes(boxes), labels, width, height, len(task.heads), where, task.heads)
    for message in checked.dropped + checked.clipped:
        log.warning("%s", message)
    result.dropped += checked.dropped
    result.clipped += checked.clipped
    problems = checked.problems
    layout = task.kind.label_layout
    if layout == "class":
        presence = _single_class(task.heads, np.asarray(labels, np.int64), no_box, where, problems)
    else:
        shown = checked.labels if layout == "boxes" else np.asarray(labels, np.int64)
        presence = tuple(int(c in shown) for c in range(len(task.heads)))
    result.problems += problems
    if problems or not keep:
        result.unlabelled.append(image)
        return None
    objects = tuple((int(c), *(float(v) for v in box)) for c, box in zip(checked.labels, checked.boxes))
    normalised = tuple(((x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height)
                       for _, x1, y1, x2, y2 in objects)
    sample = Sample(image, relative_key(image, root), presence, normalised, group, None, objects)
    result.samples.append(sample)
    return sample


def _single_class(heads, labels: np.ndarray, no_box: int | None, where, problems: list[str]) -> tuple[int, ...]:
    """(class,) of a single-label image from its boxes' classes; (-1,) and a problem when there is not one."""
    classes = sorted({int(c) for c in labels if 0 <= c < len(heads)})
    if len(classes) == 1:
        return (classes[0],)
    if len(classes) > 1:
        problems.append(f"{where}: boxes of {len(classes)} classes ({', '.join(heads[c] for c in classes)}); a "
                        "single-label task takes one class per image: correct the labels, or make the task "
                        "multi-label")
    elif len(labels) == 0 and no_box is not None:
        return (no_box,)
    elif len(labels) == 0:
        problems.append(f"{where}: no box, so no class; set the reader's no_box_class: to the class of an image "
                        "without boxes")
    return (-1,)
