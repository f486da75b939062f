"""Score predictions with the competition formula: ``python -m model.score PRED_DIR GT_DIR``.

Reads cla_pre.csv / fea_pre.csv from PRED_DIR and cla_gt.csv / fea_gt.csv from GT_DIR. Rows are matched
by id; a prediction file keyed by img_name is matched through GT_DIR's <task>_order.csv (id,image_name),
or through the number in the file name when there is no order file. Missing ids count as wrong, and
missing, extra, duplicate and malformed rows are all reported.
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .metric import cla_score, fea_score, overall_score
from .tasks import TASKS, Task


class ScoreError(ValueError):
    pass


@dataclass
class TaskResult:
    task: str
    scores: dict
    problems: list[str] = field(default_factory=list)


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ScoreError(f"{path}: cannot parse as CSV ({e})") from e


def _ids_from_names(names: pd.Series, gt_dir: Path, task: Task, problems: list[str]) -> pd.Series:
    order_file = gt_dir / f"{task.name}_order.csv"
    if order_file.is_file():
        order = _read_csv(order_file)
        mapping = dict(zip(order["image_name"], order["id"].astype(int)))
    else:
        mapping = {}
    ids = []
    for name in names:
        if name in mapping:
            ids.append(mapping[name])
        elif re.fullmatch(r"\d+", Path(name).stem) and not mapping:
            ids.append(int(Path(name).stem))
        else:
            problems.append(f"img_name {name!r} is not in {order_file.name}" if mapping
                            else f"img_name {name!r} has no number in it")
            ids.append(-1)
    return pd.Series(ids, index=names.index)


def _parse_labels(frame: pd.DataFrame, columns, allowed, path: Path, problems: list[str]) -> pd.DataFrame:
    out = pd.DataFrame(index=frame.index)
    for column in columns:
        values = pd.to_numeric(frame[column].str.strip(), errors="coerce")
        bad = values.isna() | ~values.isin(allowed)
        for row in frame.index[bad][:10]:
            problems.append(f"{path.name} row {row + 2}: {column}={frame.at[row, column]!r} is not one of {sorted(allowed)}")
        if bad.sum() > 10:
            problems.append(f"{path.name}: {int(bad.sum()) - 10} more malformed {column} values")
        out[column] = values.where(~bad, -1).astype(int)
    return out


def score_task(task: Task, pred_path: Path, gt_path: Path) -> TaskResult:
    problems: list[str] = []
    gt, pred = _read_csv(gt_path), _read_csv(pred_path)
    columns = list(task.label_columns)
    allowed = set(range(task.num_outputs)) if not task.multilabel else {0, 1}
    for frame, path, key_options in ((gt, gt_path, ("id",)), (pred, pred_path, ("id", "img_name"))):
        if not frame.columns.size or frame.columns[0] not in key_options or set(columns) - set(frame.columns):
            raise ScoreError(f"{path}: header {list(frame.columns)} should be "
                             f"{' or '.join(k for k in key_options)},{','.join(columns)}")
    gt_ids = pd.to_numeric(gt["id"], errors="coerce")
    if gt_ids.isna().any():
        raise ScoreError(f"{gt_path}: non-numeric ids in the ground truth")
    if pred.columns[0] == "id":
        pred_ids = pd.to_numeric(pred["id"].str.strip(), errors="coerce")
        for row in pred.index[pred_ids.isna()]:
            problems.append(f"{pred_path.name} row {row + 2}: id {pred.at[row, 'id']!r} is not a number")
        pred_ids = pred_ids.fillna(-1).astype(int)
    else:
        pred_ids = _ids_from_names(pred["img_name"], gt_path.parent, task, problems)
    labels = _parse_labels(pred, columns, allowed, pred_path, problems)
    labels.index = pred_ids
    duplicated = labels.index[labels.index.duplicated() & (labels.index >= 0)]
    for dup in sorted(set(duplicated)):
        problems.append(f"{pred_path.name}: id {dup} appears more than once; the first row is used")
    labels = labels[~labels.index.duplicated()]
    gt_ids = gt_ids.astype(int)
    missing = sorted(set(gt_ids) - set(labels.index))
    extra = sorted(set(labels.index) - set(gt_ids) - {-1})
    if missing:
        problems.append(f"{len(missing)} id(s) of the ground truth have no prediction (counted wrong): "
                        f"{missing[:20]}{' ...' if len(missing) > 20 else ''}")
    if extra:
        problems.append(f"{len(extra)} predicted id(s) are not in the ground truth (ignored): "
                        f"{extra[:20]}{' ...' if len(extra) > 20 else ''}")
    y_pred = labels.reindex(gt_ids.values).fillna(-1).astype(int).to_numpy()
    y_true = _parse_labels(gt, columns, allowed, gt_path, problems).to_numpy()
    scores = cla_score(y_true[:, 0], y_pred[:, 0]) if not task.multilabel else fea_score(y_true, y_pred)
    scores["n"] = int(len(gt_ids))
    return TaskResult(task.name, scores, problems)


def score_folder(pred_dir: str | Path, gt_dir: str | Path) -> dict:
    """Scores of every task whose prediction and ground-truth files are both present."""
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    results = {}
    for task in TASKS.values():
        pred, gt = pred_dir / f"{task.name}_pre.csv", gt_dir / f"{task.name}_gt.csv"
        if gt.is_file() and not pred.is_file():
            results[task.name] = TaskResult(task.name, {"score": 0.0}, [f"{pred}: missing, task scored 0"])
        elif gt.is_file():
            results[task.name] = score_task(task, pred, gt)
    if not results:
        raise ScoreError(f"{gt_dir}: no cla_gt.csv or fea_gt.csv here")
    out = {name: {"scores": r.scores, "problems": r.problems} for name, r in results.items()}
    if {"cla", "fea"} <= set(results):
        out["overall"] = overall_score(results["cla"].scores["score"], results["fea"].scores["score"])
    return out


def format_report(report: dict) -> str:
    lines = []
    if "cla" in report:
        s = report["cla"]["scores"]
        lines.append(f"cla      {s['score']:.4f}   accuracy {s.get('accuracy', float('nan')):.4f}   "
                     f"macro-F1 {s.get('macro_f1', float('nan')):.4f}   (n={s.get('n', 0)})")
    if "fea" in report:
        s = report["fea"]["scores"]
        lines.append(f"fea      {s['score']:.4f}   (n={s.get('n', 0)})")
        for name, part in s.get("features", {}).items():
            lines.append(f"  {name:<14}{part['score']:.4f}   accuracy {part['accuracy']:.4f}   F1 {part['f1']:.4f}")
    if "overall" in report:
        lines.append(f"overall  {report['overall']:.4f}")
    for name in ("cla", "fea"):
        for problem in report.get(name, {}).get("problems", []):
            lines.append(f"! {name}: {problem}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m model.score", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pred_dir", type=Path, help="folder with cla_pre.csv and/or fea_pre.csv")
    p.add_argument("gt_dir", type=Path, help="folder with cla_gt.csv and/or fea_gt.csv (and *_order.csv)")
    p.add_argument("--json", type=Path, help="also write the full report to this JSON file")
    args = p.parse_args(argv)
    try:
        report = score_folder(args.pred_dir, args.gt_dir)
    except (ScoreError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(report))
    if args.json:
        from .atomic import write_json
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
