"""The one-row-per-image CSV of the classification kinds: written by run.py, checked by run.py --check and
scored by model.score. The id column is the image's number or its file name; the label columns are the
kind's (``Kind.format_values`` and ``Kind.parse_values`` turn values into cells and back)."""
from __future__ import annotations

import csv
import dataclasses
import io
import re
from pathlib import Path

import numpy as np

from ..atomic import write_text
from . import ScoreError, TaskScore, csv_columns, missing_output, read_csv


def format_csv(task, images: list, labels: np.ndarray, probs: np.ndarray, id_mode: str | None = None) -> str:
    """The task's output CSV: the id column (the number, or the file name), then its label columns."""
    out = task.output
    id_mode = id_mode or out.id
    header = out.header_for(id_mode)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([header, *out.columns])
    for image, values in zip(images, task.kind.format_values(task, labels, probs)):
        writer.writerow([image.written_id(id_mode), *values])
    return buffer.getvalue()


def write_predictions(path: str | Path, task, images, labels, probs, id_mode: str | None = None) -> None:
    write_text(path, format_csv(task, images, labels, probs, id_mode))
def read_output_csv(path: Path, task) -> tuple[list[list[str]] | None, list[str]]:
    """(the rows of an output CSV, problems): it exists and has the task's header."""
    if not path.is_file():
        return None, [f"{path}: not written"]
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    expected = [task.output.id_header, *task.output.columns]
    if not rows or rows[0] != expected:
        return None, [f"{path}: header {rows[0] if rows else []}, expected {expected}"]
    return rows, []


def validate_csv(path: Path, task, images) -> list[str]:
    """The CSV has the task's header, one row per image in id order, and only allowed values."""
    rows, problems = read_output_csv(path, task)
    if rows is None:
        return problems
    ids = [str(image.id if task.output.id == "number" else image.name) for image in images]
    problems = []
    if [r[0] for r in rows[1:]] != ids:
        problems.append(f"{path}: the first column is not the test images' ids in order")
    values = {c: [r[i + 1] if i + 1 < len(r) else "" for r in rows[1:]] for i, c in enumerate(task.output.columns)}
    problems += [f"{path} {p}" for p in task.kind.parse_values(task, values)[2]]
    return problems


def truth_view(task):
    """The task as its ground truth is written: labels (never probabilities) in the label columns."""
    if task.output.values != "probabilities":
        return task
    columns = tuple(task.kind.output_columns(task.heads, "labels"))
    return dataclasses.replace(task, output=dataclasses.replace(task.output, values="labels", columns=columns))


def _ids_from_names(names: list[str], order_files: list[Path], problems: list[str]) -> list[int]:
    mapping, order_file = {}, next((f for f in order_files if f.is_file()), order_files[0])
    if order_file.is_file():
        header, rows = read_csv(order_file)
        columns = csv_columns(header, rows, ["id", "image_name"], order_file)
        mapping = {name: int(i) for i, name in zip(columns["id"], columns["image_name"])}
    ids = []
    for name in names:
        if name in mapping:
            ids.append(mapping[name])
        elif not mapping and re.fullmatch(r"\d+", Path(name).stem):
            ids.append(int(Path(name).stem))
        else:
            problems.append(f"file name {name!r} is not in {order_file.name}" if mapping
                            else f"file name {name!r} has no number in it (and there is no {order_file.name})")
            ids.append(-1)
    return ids


def score_task(task, pred_path: Path, gt_path: Path) -> TaskScore:
    problems: list[str] = []
    gt_task = truth_view(task)
    gt_header, gt_rows = read_csv(gt_path)
    if not gt_header or gt_header[0] != "id":
        raise ScoreError(f"{gt_path}: the first column should be id, found {gt_header[:1]}")
    gt_values = csv_columns(gt_header, gt_rows, list(gt_task.output.columns), gt_path)
    try:
        gt_ids = [int(v) for v in (r[0] for r in gt_rows)]
    except ValueError:
        raise ScoreError(f"{gt_path}: non-numeric ids in the ground truth") from None
    y_true, _, gt_problems = gt_task.kind.parse_values(gt_task, gt_values)
    problems += [f"{gt_path.name} {p}" for p in gt_problems]

    header, rows = read_csv(pred_path)
    keys = ("id", task.output.id_header, "img_name")
    if not header or header[0] not in keys:
        raise ScoreError(f"{pred_path}: header {header} should start with {' or '.join(dict.fromkeys(keys))}, "
                         f"then {','.join(task.output.columns)}")
    values = csv_columns(header, rows, list(task.output.columns), pred_path)
    first = [r[0].strip() if r else "" for r in rows]
    if all(re.fullmatch(r"\d+", v) for v in first) and header[0] != "img_name":
        pred_ids = [int(v) for v in first]
    else:
        prefix = gt_path.name.removesuffix("_gt.csv")
        order_files = [gt_path.parent / f"{name}_order.csv" for name in dict.fromkeys((task.name, prefix))]
        pred_ids = _ids_from_names(first, order_files, problems)
    labels, probs, label_problems = task.kind.parse_values(task, values)
    problems += [f"{pred_path.name} {p}" for p in label_problems]
    position: dict[int, int] = {}
    for row, pid in enumerate(pred_ids):
        if pid in position and pid >= 0:
            problems.append(f"{pred_path.name}: id {pid} appears more than once; the first row is used")
        elif pid >= 0:
            position[pid] = row
    missing = [i for i in gt_ids if i not in position]
    extra = sorted(set(position) - set(gt_ids))
    if gt_ids and len(missing) == len(gt_ids):
        raise ScoreError(f"{pred_path}: not one of its {len(rows)} rows matches an id of {gt_path.name}; is it the "
                         f"prediction of this test set? " + "; ".join(problems[:3]))
    if missing:
        problems.append(f"{len(missing)} id(s) of the ground truth have no prediction (counted wrong): "
                        f"{missing[:20]}{' ...' if len(missing) > 20 else ''}")
    if extra:
        problems.append(f"{len(extra)} predicted id(s) are not in the ground truth (ignored): "
                        f"{extra[:20]}{' ...' if len(extra) > 20 else ''}")
    wrong = np.full(labels.shape[1:], -2) if labels.ndim > 1 else -2  # -2: wrong whatever the truth
    y_pred = np.array([labels[position[i]] if i in position else wrong for i in gt_ids])
    p = None
    if probs is not None and not missing:
        p = np.array([probs[position[i]] for i in gt_ids])
    scores = task.kind.scores(task, y_true, y_pred, p) if task.metric != "auc" or p is not None else \
        {"score": float("nan")}
    if task.metric == "auc" and p is None:
        problems.append("the metric is AUC, which needs a probability for every image (output.values: probabilities)")
    scores["n"] = len(gt_ids)
    return TaskScore(task.name, scores, problems)


def score_csv_task(task, pred_dir: Path, gt_dir: Path) -> TaskScore | None:
    """A classification task's CSV against GT_DIR/<its _gt.csv>; None when there is no such ground truth."""
    pred, gt = pred_dir / task.output.file, gt_dir / task.gt_file
    if not gt.is_file():
        return None
    return score_task(task, pred, gt) if pred.is_file() else missing_output(task, pred)
