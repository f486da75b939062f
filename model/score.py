"""Score prediction CSVs with each task's metric: ``python -m model.score PRED_DIR GT_DIR``.

The tasks come from the bundles in model/weights (``--weights DIR`` for others) or from task files
(``--task FILE``, repeatable). For each task, PRED_DIR/<output.file> (say cla_pre.csv) is scored against
GT_DIR/<the same name with _gt for _pre> (cla_gt.csv), which has an ``id`` column and the task's label
columns. Rows are matched by id; a prediction file keyed by file name is matched through GT_DIR's
<task>_order.csv (id,image_name), or through the number in the file name when there is no order file.
Missing ids count as wrong, and missing, extra, duplicate and malformed rows are all reported. With
several tasks, ``overall`` is their mean (for BI-RADS: 0.5 * cla + 0.5 * fea).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .bundle import WEIGHTS_DIR, find_bundles, read_manifest
from .cli import guarded
from .metric import overall_score
from .task import load_task, task_from_dict


REPORTED = ("accuracy", "macro_f1", "balanced_accuracy", "auc", "dice", "dice_per_image", "iou", "sensitivity",
            "specificity")


class ScoreError(ValueError):
    pass


@dataclass
class TaskResult:
    task: str
    scores: dict
    problems: list[str] = field(default_factory=list)
    missing: bool = False


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error) as e:
        raise ScoreError(f"{path}: cannot read as a UTF-8 CSV ({e})") from e
    except OSError as e:
        raise ScoreError(f"{path}: cannot be read ({e.strerror or e})") from e
    if not rows:
        raise ScoreError(f"{path}: empty file")
    return [c.strip() for c in rows[0]], rows[1:]


def _columns(header, rows, names, path: Path) -> dict[str, list[str]]:
    missing = [n for n in names if n not in header]
    if missing:
        raise ScoreError(f"{path}: header {header} lacks {missing}")
    return {n: [r[header.index(n)] if header.index(n) < len(r) else "" for r in rows] for n in names}


def truth_view(task):
    """The task as its ground truth is written: labels (never probabilities) in the label columns."""
    if task.output.values != "probabilities":
        return task
    columns = tuple(task.kind.output_columns(task.heads, "labels"))
    return dataclasses.replace(task, output=dataclasses.replace(task.output, values="labels", columns=columns))


def _ids_from_names(names: list[str], order_files: list[Path], problems: list[str]) -> list[int]:
    mapping, order_file = {}, next((f for f in order_files if f.is_file()), order_files[0])
    if order_file.is_file():
        header, rows = _read_csv(order_file)
        columns = _columns(header, rows, ["id", "image_name"], order_file)
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


def score_task(task, pred_path: Path, gt_path: Path) -> TaskResult:
    problems: list[str] = []
    gt_task = truth_view(task)
    gt_header, gt_rows = _read_csv(gt_path)
    if not gt_header or gt_header[0] != "id":
        raise ScoreError(f"{gt_path}: the first column should be id, found {gt_header[:1]}")
    gt_values = _columns(gt_header, gt_rows, list(gt_task.output.columns), gt_path)
    try:
        gt_ids = [int(v) for v in (r[0] for r in gt_rows)]
    except ValueError:
        raise ScoreError(f"{gt_path}: non-numeric ids in the ground truth") from None
    y_true, _, gt_problems = gt_task.kind.parse_values(gt_task, gt_values)
    problems += [f"{gt_path.name} {p}" for p in gt_problems]

    header, rows = _read_csv(pred_path)
    keys = ("id", task.output.id_header, "img_name")
    if not header or header[0] not in keys:
        raise ScoreError(f"{pred_path}: header {header} should start with {' or '.join(dict.fromkeys(keys))}, "
                         f"then {','.join(task.output.columns)}")
    values = _columns(header, rows, list(task.output.columns), pred_path)
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
    return TaskResult(task.name, scores, problems)


def score_csv_task(task, pred_dir: Path, gt_dir: Path) -> TaskResult | None:
    """A classification task's CSV against GT_DIR/<its _gt.csv>; None when there is no such ground truth."""
    pred, gt = pred_dir / task.output.file, gt_dir / task.gt_file
    if not gt.is_file():
        return None
    return score_task(task, pred, gt) if pred.is_file() else missing_output(task, pred)


def missing_output(task, pred: Path) -> TaskResult:
    """A task whose ground truth is there but whose prediction is not: scored 0, and flagged."""
    return TaskResult(task.name, {"score": 0.0}, [f"{pred}: missing, task scored 0"], missing=True)


def score_mask_task(task, pred_dir: Path, gt_dir: Path) -> TaskResult | None:
    """A segmentation task's masks (a folder of mask images, or an RLE CSV) against the true masks.

    The true masks are GT_DIR/<test_folder>/, one mask image per test image, named after the image's stem
    (``0001.png``, or with the task's mask suffix, ``0001_mask.png``); None when that folder has none.
    Dice per volume pools the images whose names match the task's ``data.group_pattern``; without one,
    each image is its own volume. A test image with no predicted mask counts as an empty prediction."""
    from . import mask_outputs
    from .images import is_image_file
    from .masks import MaskError, load_mask, pixel_counts, segmentation_scores
    from .readers.base import group_of
    truth_dir = gt_dir / task.test_folder
    suffix = str(task.data.get("mask_suffix", "_mask"))
    files = sorted(p for p in truth_dir.iterdir() if is_image_file(p) and not p.name.startswith(".")) \
        if truth_dir.is_dir() else []
    if not files:
        return None
    pred = pred_dir / task.output.file
    if not pred.exists():
        return missing_output(task, pred)
    problems: list[str] = []
    truth: dict[str, object] = {}
    for path in files:
        stem = path.stem.removesuffix(suffix) if suffix and path.stem.endswith(suffix) else path.stem
        try:
            truth[stem] = load_mask(path, task.mask_values)
        except MaskError as e:
            raise ScoreError(f"{e} (in the ground truth)") from None
    if task.output.values == "masks":
        predicted, found = mask_outputs.read_mask_folder(pred, list(truth), task.mask_values)
    elif task.output.values == "rle":
        _, rows = _read_csv(pred)
        lookup = {key: stem for key in {r[0].strip() for r in rows if r} if (stem := _stem_of(key, truth))}
        predicted, found = mask_outputs.read_rle_csv(pred, {k: truth[s].shape for k, s in lookup.items()}, task.heads,
                                                     task.output.rle_order, task.output.columns)
        predicted = {lookup[key]: mask for key, mask in predicted.items()}
    else:
        raise ScoreError(f"{task.name}: output.values is summary, which holds no masks to score; "
                         "score a masks or rle output")
    problems += found
    stems = list(truth)
    missing = [s for s in stems if s not in predicted]
    if len(missing) == len(stems):
        raise ScoreError(f"{pred}: no predicted mask matches a true mask in {truth_dir}; is it this test set's?")
    if missing:
        problems.append(f"{len(missing)} image(s) have no predicted mask (scored as empty): {missing[:10]}")
    bad = [s for s in stems if s in predicted and predicted[s].shape != truth[s].shape]
    if bad:
        raise ScoreError(f"{pred}: masks of another size than the truth for {bad[:5]}; masks must be at each "
                         "image's original size")
    pattern = task.data.get("group_pattern")
    groups = [group_of(stem, pattern) or stem for stem in stems] if pattern else stems
    # Counted image by image: test images differ in size.
    counts = np.concatenate([pixel_counts(predicted.get(s, np.zeros_like(truth[s]))[None], truth[s][None],
                                          len(task.heads)) for s in stems])
    scores = segmentation_scores(counts, np.array(groups), task.metric)
    scores["n"] = len(stems)
    return TaskResult(task.name, scores, problems)


def _stem_of(key: str, truth: dict) -> str | None:
    """The true mask an RLE row's id names: its stem, its file name (0001.png), or its number (1 for 0001)."""
    for candidate in (key, Path(key).stem):
        if candidate in truth:
            return candidate
    if key.isdigit():
        return next((stem for stem in truth if stem.isdigit() and int(stem) == int(key)), None)
    return None


def score_folder(pred_dir: str | Path, gt_dir: str | Path, tasks) -> dict:
    """Scores of every task whose ground truth is in ``gt_dir``. A task that cannot be scored (a broken
    prediction file, say) is reported as an ``error`` beside the others' scores, with no overall score;
    with nothing else to report, its error is raised."""
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    if not pred_dir.is_dir():
        raise ScoreError(f"{pred_dir}: prediction folder not found")
    if not gt_dir.is_dir():
        raise ScoreError(f"{gt_dir}: ground-truth folder not found")
    results, errors = {}, {}
    for task in tasks:
        try:
            result = task.kind.score_outputs(task, pred_dir, gt_dir)
        except ScoreError as e:
            errors[task.name] = str(e)
            continue
        if result is not None:
            results[task.name] = result
    if len(errors) == 1 and not results:
        raise ScoreError(next(iter(errors.values())))
    if not results and not errors:
        raise ScoreError(f"{gt_dir}: no ground truth for the tasks {', '.join(t.name for t in tasks)} "
                         f"(looked for {', '.join(t.kind.truth_location(t) for t in tasks)})")
    out = {name: {"scores": r.scores, "problems": r.problems, "missing": r.missing} for name, r in results.items()}
    out.update({name: {"error": message} for name, message in errors.items()})
    if len(results) > 1 and not errors:
        out["overall"] = overall_score(r.scores["score"] for r in results.values())
    return out


def format_report(report: dict) -> str:
    lines = []
    for name, entry in report.items():
        if name == "overall" or "error" in entry:
            continue
        s = entry["scores"]
        parts = "   ".join(f"{k.replace('_', '-')} {s[k]:.4f}" for k in REPORTED if isinstance(s.get(k), float))
        lines.append(f"{name:<8} {s['score']:.4f}   {parts}   (n={s.get('n', 0)})")
        for label, part in s.get("labels", {}).items():
            lines.append(f"  {label:<14}{part['score']:.4f}   accuracy {part['accuracy']:.4f}   F1 {part['f1']:.4f}")
    if "overall" in report:
        lines.append(f"overall  {report['overall']:.4f}")
    for name, entry in report.items():
        if name != "overall":
            lines += [f"! {name}: {problem}" for problem in entry.get("problems", ())]
            lines += [f"! {name}: not scored: {entry['error']}"] if "error" in entry else []
    return "\n".join(lines)


def tasks_from(weights: Path | None, task_files: list[Path]) -> list:
    if task_files:
        return [load_task(path) for path in task_files]
    folders, _ = find_bundles(weights or WEIGHTS_DIR)
    if not folders:
        raise ScoreError(f"{weights or WEIGHTS_DIR}: no bundle to take the tasks from; pass --task FILE")
    return [task_from_dict(read_manifest(f)["task"], str(f), training=False) for f in folders]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m model.score", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pred_dir", type=Path, help="folder with the prediction CSVs (cla_pre.csv, ...)")
    p.add_argument("gt_dir", type=Path, help="folder with the ground truth (cla_gt.csv, ...; *_order.csv)")
    p.add_argument("--weights", type=Path, help="take the tasks from these bundles (default model/weights)")
    p.add_argument("--task", type=Path, action="append", default=[], help="take the task from this task file (repeatable)")
    p.add_argument("--json", type=Path, help="also write the full report to this JSON file")
    args = p.parse_args(argv)
    report = score_folder(args.pred_dir, args.gt_dir, tasks_from(args.weights, args.task))
    print(format_report(report))
    if args.json:
        from .atomic import write_json
        write_json(args.json, report)
    entries = [entry for entry in report.values() if isinstance(entry, dict)]
    if any("error" in entry for entry in entries):
        return 2
    return 1 if any(entry.get("missing") for entry in entries) else 0


if __name__ == "__main__":
    sys.exit(guarded(main))
