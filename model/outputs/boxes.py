"""Detection outputs: the four forms predicted boxes are handed in, and reading them back to score.

* ``boxes``: a CSV with one row per box, ``<id>,class,score,x1,y1,x2,y2``, the class by name. An image
  without boxes still has one row, its other cells empty, so that every image is listed.
* ``prediction-string``: the CSV of Kaggle's detection competitions, one row per image,
  ``<id>,PredictionString``, the string ``class score x1 y1 x2 y2`` repeated, space-separated, with the
  class as its 0-based index (as VinBigData's is); empty for an image without boxes.
* ``coco``: a COCO results JSON, a list of ``{image_id, category_id, bbox: [x, y, w, h], score}`` with the
  id string as ``image_id`` and ``category_id`` 1..K, the task's classes in order (COCO has no class 0).
  It cannot list an image without boxes: scoring takes the image ids from the truth.
* ``summary``: one row per image, ``<id>,count_<class>...,max_score``: the boxes of each class scored at or
  above its threshold, and the highest box score (empty without a box). It holds no boxes: image-level
  scores only.

Per image, predictions are ``model.boxes.Detections`` (xyxy pixels of the image's own geometry, x2
exclusive; 0-based labels). Pixels are written with 3 decimals and scores with 6, trailing zeros dropped,
so a box reads back within 5e-4 px. The writers take the images' ids in order and one Detections per id;
each reader returns what it found keyed by id, and raises ScoreError naming the file and the bad lines.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..atomic import write_text
from ..boxes import Detections, as_detections
from . import ScoreError, csv_columns, read_csv

FORMATS = ("boxes", "prediction-string", "coco", "summary")
BOX_COLUMNS = ("class", "score", "x1", "y1", "x2", "y2")
PREDICTION_STRING = "PredictionString"
SHOWN = 5  # bad lines named in one error


class ImageSummary(NamedTuple):
    """One image's row of a ``summary`` output: boxes per class at the threshold, and the highest score."""

    counts: np.ndarray
    max_score: float | None


def default_columns(fmt: str, classes) -> list[str]:
    """A CSV format's headers after the id (a task file's ``output.columns`` may rename them); [] for coco."""
    return {"boxes": list(BOX_COLUMNS), "prediction-string": [PREDICTION_STRING],
            "summary": [*(f"count_{c}" for c in classes), "max_score"]}.get(fmt, [])


def format_detections(fmt: str, ids, id_header: str, classes, predictions, threshold=0.5, columns=None) -> str:
    """The text of output ``fmt`` for images ``ids`` and their ``predictions``; ``threshold`` (one, or
    one per class) only matters to ``summary``; ``columns``: the headers after the id (default_columns)."""
    ids, predictions = _checked(ids, classes, predictions)
    columns = list(columns or default_columns(fmt, classes))
    if fmt == "boxes":
        return boxes_csv(ids, id_header, classes, predictions, columns)
    if fmt == "prediction-string":
        return prediction_string_csv(ids, id_header, predictions, columns)
    if fmt == "coco":
        return coco_json(ids, predictions)
    if fmt == "summary":
        return summary_csv(ids, id_header, classes, predictions, threshold, columns)
    raise ValueError(f"detection output {fmt!r}: one of {', '.join(FORMATS)}")


def write_detections(path: str | Path, fmt: str, ids, id_header: str, classes, predictions, threshold=0.5,
                     columns=None) -> None:
    """``format_detections`` written atomically to ``path``."""
    write_text(path, format_detections(fmt, ids, id_header, classes, predictions, threshold, columns))


def read_detections(path: str | Path, fmt: str, id_header: str, classes, columns=None) -> dict:
    """What output ``fmt`` at ``path`` holds, keyed by image id: Detections, or ImageSummary for ``summary``."""
    readers = {"boxes": read_boxes_csv, "prediction-string": read_prediction_string_csv,
               "summary": read_summary_csv}
    if fmt == "coco":
        return read_coco_json(path, classes)
    if fmt not in readers:
        raise ValueError(f"detection output {fmt!r}: one of {', '.join(FORMATS)}")
    return readers[fmt](path, id_header, classes, list(columns or default_columns(fmt, classes)))


def _checked(ids, classes, predictions) -> tuple[list[str], list[Detections]]:
    ids = [str(i) for i in ids]
    if len(ids) != len(predictions):
        raise ValueError(f"{len(ids)} ids and {len(predictions)} predictions: one per image")
    if len(set(ids)) != len(ids):
        raise ValueError("the image ids are not unique")
    predictions = [as_detections(*p) for p in predictions]
    if any(((p.labels < 0) | (p.labels >= len(classes))).any() for p in predictions):
        raise ValueError(f"labels should be class indices 0..{len(classes) - 1}")
    return ids, predictions


def _number(value: float, digits: int) -> str:
    text = f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _box_cells(box, score) -> list[str]:
    return [_number(score, 6), *(_number(v, 3) for v in box)]


def _csv_text(rows) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def boxes_csv(ids, id_header: str, classes, predictions, columns=BOX_COLUMNS) -> str:
    rows = [[id_header, *columns]]
    for key, (boxes, scores, labels) in zip(ids, predictions):
        rows += [[key, classes[label], *_box_cells(box, score)] for box, score, label in zip(boxes, scores, labels)]
        if not len(boxes):
            rows.append([key, *[""] * len(BOX_COLUMNS)])
    return _csv_text(rows)


def prediction_string_csv(ids, id_header: str, predictions, columns=(PREDICTION_STRING,)) -> str:
    rows = [[id_header, *columns]]
    for key, (boxes, scores, labels) in zip(ids, predictions):
        rows.append([key, " ".join(" ".join([str(label), *_box_cells(box, score)])
                                   for box, score, label in zip(boxes, scores, labels))])
    return _csv_text(rows)


def coco_json(ids, predictions) -> str:
    """One result a line, so that a result's line is its number + 1."""
    entries = [json.dumps({"image_id": key, "category_id": int(label) + 1,
                           "bbox": [round(float(v), 3) for v in (x1, y1, x2 - x1, y2 - y1)],
                           "score": round(float(score), 6)})
               for key, (boxes, scores, labels) in zip(ids, predictions)
               for (x1, y1, x2, y2), score, label in zip(boxes, scores, labels)]
    return "[\n" + ",\n".join(entries) + "\n]\n" if entries else "[]\n"


def summary_csv(ids, id_header: str, classes, predictions, threshold=0.5, columns=None) -> str:
    thresholds = np.broadcast_to(np.asarray(threshold, np.float64), (len(classes),))
    rows = [[id_header, *(columns or default_columns("summary", classes))]]
    for key, (_, scores, labels) in zip(ids, predictions):
        counts = np.bincount(labels[scores >= thresholds[labels]], minlength=len(classes))
        rows.append([key, *map(str, counts), _number(scores.max(), 6) if len(scores) else ""])
    return _csv_text(rows)


class _Lines:
    """The bad lines of one file, gathered and raised as one ScoreError naming the first few."""

    def __init__(self, path, unit: str = "line"):
        self.path, self.unit, self.said = Path(path), unit, []

    def add(self, line: int, what: str) -> None:
        self.said.append(f"{self.unit} {line}: {what}")

    def number(self, line: int, what: str, text: str) -> float | None:
        try:
            value = float(text)
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value):
            self.add(line, f"{what} {text!r} is not a number")
            return None
        return value

    def check(self) -> None:
        if self.said:
            more = f" (and {len(self.said) - SHOWN} more)" if len(self.said) > SHOWN else ""
            raise ScoreError(f"{self.path}: {'; '.join(self.said[:SHOWN])}{more}")


def _box(lines: _Lines, line: int, cells) -> tuple[float, list[float]] | None:
    """(score, [x1, y1, x2, y2]) from five cells, or None with what was wrong said."""
    numbers = [lines.number(line, name, text) for name, text in zip(BOX_COLUMNS[1:], cells)]
    if any(v is None for v in numbers):
        return None
    score, x1, y1, x2, y2 = numbers
    if x2 < x1 or y2 < y1:
        lines.add(line, f"{'x2 < x1' if x2 < x1 else 'y2 < y1'} in box ({x1:g}, {y1:g}, {x2:g}, {y2:g})")
        return None
    return score, [x1, y1, x2, y2]


def _as_detections(found: dict[str, list]) -> dict[str, Detections]:
    """{id: [(box, score, label), ...]} as {id: Detections}."""
    return {key: as_detections([b for b, _, _ in items], [s for _, s, _ in items], [c for _, _, c in items])
            for key, items in found.items()}


def _rows(lines: _Lines, names: list[str]):
    """(line number, stripped cells of ``names``) for each row of a CSV that is not blank and has an id
    (the first of ``names``)."""
    header, rows = read_csv(lines.path)
    columns = csv_columns(header, rows, names, lines.path)
    for line, cells in enumerate(zip(*columns.values()), 2):
        cells = [c.strip() for c in cells]
        if cells[0]:
            yield line, cells
        elif any(cells):
            lines.add(line, f"no {names[0]}")


def read_boxes_csv(path, id_header: str, classes, columns=BOX_COLUMNS) -> dict[str, Detections]:
    """A ``boxes`` CSV's boxes by id; an id listed only with empty box cells has none. Rows of one id need
    not be together, and an empty row beside an id's boxes adds nothing."""
    lines, index = _Lines(path), {name: k for k, name in enumerate(classes)}
    found: dict[str, list] = {}
    for line, (key, name, *cells) in _rows(lines, [id_header, *columns]):
        items = found.setdefault(key, [])
        if not (name or any(cells)):
            continue
        if not (name and all(cells)):
            lines.add(line, f"empty {', '.join(c for c, v in zip(columns, [name, *cells]) if not v)}: a box needs "
                            "every column, and an image without boxes leaves them all empty")
            continue
        box = _box(lines, line, cells)
        if name not in index:
            lines.add(line, f"unknown class {name!r}; the classes are {', '.join(map(str, classes))}")
        elif box is not None:
            items.append((box[1], box[0], index[name]))
    lines.check()
    return _as_detections(found)


def read_prediction_string_csv(path, id_header: str, classes, columns=(PREDICTION_STRING,)) -> dict[str, Detections]:
    """A ``prediction-string`` CSV's boxes by id (an empty string: no boxes); an id twice is an error."""
    lines, found = _Lines(path), {}
    for line, (key, text) in _rows(lines, [id_header, *columns]):
        if key in found:
            lines.add(line, f"{id_header} {key!r} again (one row per image)")
            continue
        tokens, items = text.split(), []
        found[key] = items
        if len(tokens) % 6:
            lines.add(line, f"{len(tokens)} values: it should be groups of six, class score x1 y1 x2 y2")
            continue
        for start in range(0, len(tokens), 6):
            label, box = tokens[start], _box(lines, line, tokens[start + 1:start + 6])
            if not (label.isdigit() and int(label) < len(classes)):
                lines.add(line, f"class {label!r} is not a class index 0..{len(classes) - 1}")
            elif box is not None:
                items.append((box[1], box[0], int(label)))
    lines.check()
    return _as_detections(found)


def read_coco_json(path, classes) -> dict[str, Detections]:
    """A COCO results JSON's boxes by image id (a number is taken as its text); images without boxes are
    not in it. Errors name the result by its number in the list."""
    path = Path(path)
    try:
        entries = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ScoreError(f"{path}: cannot be read as JSON ({e})") from e
    if not isinstance(entries, list):
        raise ScoreError(f"{path}: a COCO results file is a list of results, found a {type(entries).__name__}")
    lines, found = _Lines(path, "result"), {}
    for n, entry in enumerate(entries, 1):
        keys = ("image_id", "category_id", "bbox", "score")
        if not isinstance(entry, dict) or any(k not in entry for k in keys):
            lines.add(n, f"should be an object with {', '.join(keys)}")
            continue
        key, category, bbox = entry["image_id"], entry["category_id"], entry["bbox"]
        if not isinstance(key, (str, int)) or isinstance(key, bool):
            lines.add(n, f"image_id {key!r} is not a string or a number")
            continue
        if not (isinstance(bbox, list) and len(bbox) == 4):
            lines.add(n, f"bbox {bbox!r} should be [x, y, width, height]")
            continue
        score, x, y, w, h = (lines.number(n, what, v) for what, v in zip(("score", "x", "y", "width", "height"),
                                                                       [entry["score"], *bbox]))
        if not (isinstance(category, int) and 1 <= category <= len(classes)):
            lines.add(n, f"category_id {category!r} is not 1..{len(classes)}, the task's classes in order")
        elif None not in (score, x, y, w, h):
            if w < 0 or h < 0:
                lines.add(n, f"bbox {bbox} has a negative width or height")
            else:
                found.setdefault(str(key), []).append(([x, y, x + w, y + h], score, category - 1))
    lines.check()
    return _as_detections(found)


def read_summary_csv(path, id_header: str, classes, columns=None) -> dict[str, ImageSummary]:
    """A ``summary`` CSV's rows by id: the counts per class and the highest score (None when empty)."""
    names = [id_header, *(columns or default_columns("summary", classes))]
    lines, found = _Lines(path), {}
    for line, (key, *counts, highest) in _rows(lines, names):
        if key in found:
            lines.add(line, f"{id_header} {key!r} again (one row per image)")
            continue
        bad = [(name, c) for name, c in zip(names[1:], counts) if not c.isdigit()]
        if bad:
            lines.add(line, f"{bad[0][0]} {bad[0][1]!r} is not a count")
        score = lines.number(line, "max_score", highest) if highest else None
        if not bad and (score is not None or not highest):
            found[key] = ImageSummary(np.array([int(c) for c in counts], np.int64), score)
    lines.check()
    return found


def score_box_task(task, pred_dir: Path, gt_dir: Path):
    """A detection task's output against the true boxes of GT_DIR/<test_folder>/, read by the task's own
    reader (the layout it trains on: VOC, YOLO, COCO or a CSV); None when that folder is absent.

    A prediction's id matches a true image by file name, or by number (the image's stem as a number, as
    run.py numbers the test images). An image with no prediction counts as one without boxes; no id
    matched at all is an error. ``summary`` outputs hold no boxes and are scored at the image level."""
    from ..box_metric import detection_scores
    from ..metric import binary_auc, binary_rates
    from ..readers import make_reader
    from . import TaskScore, missing_output
    truth_dir = Path(gt_dir) / task.test_folder
    if not truth_dir.is_dir():
        return None
    pred = Path(pred_dir) / task.output.file
    if not pred.exists():
        return missing_output(task, pred)
    reader = make_reader(task)
    try:
        root, layout = reader.locate(truth_dir)
        result = reader.read(layout, root)
    except (OSError, ValueError) as e:
        raise ScoreError(f"{truth_dir}: the true boxes cannot be read ({e})") from e
    if result.problems:
        raise ScoreError(f"{truth_dir}: the true boxes have problems: " + "; ".join(result.problems[:SHOWN]))
    samples = sorted(result.samples, key=lambda s: s.path.name)
    if not samples:
        return None
    found = read_detections(pred, task.output.values, task.output.header_for(task.output.id), task.heads,
                            task.output.columns)
    keys = {}
    for i, sample in enumerate(samples):
        keys[sample.path.name] = i
        if sample.path.stem.isdigit():
            keys[str(int(sample.path.stem))] = i
    matched = {keys[k]: v for k, v in found.items() if k in keys}
    unknown = [k for k in found if k not in keys]
    if not matched and (found or task.output.values != "coco"):
        raise ScoreError(f"{pred}: no image id matches an image of {truth_dir}; is it this test set's?")
    problems = [f"{pred}: {len(unknown)} id(s) name no image of the truth: {unknown[:SHOWN]}"] if unknown else []
    if task.output.values != "coco":
        missing = [s.path.name for i, s in enumerate(samples) if i not in matched]
        if missing:
            problems.append(f"{pred}: {len(missing)} image(s) have no row (scored as without boxes): {missing[:SHOWN]}")
    truth = [(np.array([o[1:] for o in s.objects], np.float64).reshape(-1, 4),
              np.array([o[0] for o in s.objects], np.int64)) for s in samples]
    has_object = np.array([len(boxes) > 0 for boxes, _ in truth]).astype(int)
    if task.output.values == "summary":
        counts = [matched.get(i) for i in range(len(samples))]
        said = np.array([int(c is not None and c.counts.sum() > 0) for c in counts])
        highest = np.array([c.max_score if c is not None and c.max_score is not None else 0.0 for c in counts])
        scores = {**binary_rates(has_object, said), "auc": binary_auc(has_object.astype(bool), highest)}
        return TaskScore(task.name, {"score": scores["auc"] if scores["auc"] is not None else 0.0, **scores}, problems)
    empty = Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))
    preds = [matched.get(i, empty) for i in range(len(samples))]
    scores = detection_scores(truth, preds, task.heads, 0.0)
    scores.pop("pr_curves")
    metric = task.metric if task.metric in scores else "map"
    return TaskScore(task.name, {"score": scores[metric], **scores}, problems)
