"""Score predictions (CSVs, or a segmentation task's masks) with each task's metric:
``python -m model.score PRED_DIR GT_DIR``.

The tasks come from the bundles in model/weights (``--weights DIR`` for others) or from task files
(``--task FILE``, repeatable). For each task, PRED_DIR/<output.file> (say cla_pre.csv) is scored against
GT_DIR/<the same name with _gt for _pre> (cla_gt.csv), which has an ``id`` column and the task's label
columns. Rows are matched by id; a prediction file keyed by file name is matched through GT_DIR's
<task>_order.csv (id,image_name), or through the number in the file name when there is no order file.
Missing ids count as wrong, and missing, extra, duplicate and malformed rows are all reported.

A segmentation task's PRED_DIR/<output.file> is a folder of mask PNGs or an RLE CSV, scored against the
true masks in GT_DIR/<its test folder>/ (one mask image per test image, named after it: 0001.png, or
with the task's mask suffix, 0001_mask.png); each predicted mask must have its image's size. A summary
CSV holds no masks, so it cannot be scored. With several tasks, ``overall`` is their mean (for BI-RADS:
0.5 * cla + 0.5 * fea).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


from .bundle import WEIGHTS_DIR, find_bundles
from .cli import guarded
from .errors import ScoreError
from .manifest import read_manifest
from .metric import overall_score
from .task import load_task, task_from_dict


REPORTED = ("accuracy", "macro_f1", "balanced_accuracy", "auc", "dice", "dice_per_image", "iou", "sensitivity",
            "specificity")


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
    p.add_argument("pred_dir", type=Path, help="folder with the predictions run.py wrote: CSVs (cla_pre.csv, ...) "
                   "or a segmentation task's masks (a folder of mask PNGs, or an RLE CSV)")
    p.add_argument("gt_dir", type=Path, help="folder with the ground truth: CSVs (cla_gt.csv, ...; *_order.csv), or "
                   "for a segmentation task the true masks in its test folder's name")
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
    import model.kinds  # noqa: F401  (the entry point registers the task kinds)
    sys.exit(guarded(main))
