"""Record submissions and keep a local leaderboard: ``python -m model.submissions``.

    record NAME [--pred-dir DIR] [--gt DIR] [--notes TEXT]   archive the CSVs, manifests, commit and scores
    public NAME SCORE                                         enter the public leaderboard score later
    plot [--out FILE]                                         OOF score against leaderboard and local scores (PNG)
    list                                                      print the leaderboard

Each submission is archived in submissions/<date>-<name>/ and gets one row in submissions/leaderboard.csv:
the OOF (CV) score of each task's bundle, the local score of each task on a labelled set when --gt is
given, and their means over the tasks (``oof_overall``, ``local_overall``).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

from .atomic import atomic_path, write_json
from .bundle import WEIGHTS_DIR, find_bundles
from .cli import guarded
from .manifest import MANIFEST, read_manifest
from .metric import overall_score
from .score import score_folder
from .task import task_from_dict

PROJECT = Path(__file__).resolve().parents[1]
SUBMISSIONS = PROJECT / "submissions"
BASE_COLUMNS = ["name", "date", "commit", "oof_overall", "local_overall", "public_score", "notes", "folder"]


class SubmissionError(ValueError):
    pass


def git_commit(project: Path = PROJECT) -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=project, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=project,
                               capture_output=True, text=True, check=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def read_leaderboard(root: Path = SUBMISSIONS) -> pd.DataFrame:
    path = root / "leaderboard.csv"
    if not path.is_file():
        return pd.DataFrame(columns=BASE_COLUMNS)
    return pd.read_csv(path, dtype={"name": str, "commit": str, "notes": str, "folder": str}, keep_default_na=False)


def _write_leaderboard(frame: pd.DataFrame, root: Path) -> None:
    extra = sorted(c for c in frame.columns if c not in BASE_COLUMNS)  # oof_<task>, local_<task>
    with atomic_path(root / "leaderboard.csv") as tmp:
        frame[BASE_COLUMNS[:3] + extra + BASE_COLUMNS[3:]].to_csv(tmp, index=False)


def _mean(values) -> float | None:
    values = list(values)
    return overall_score(values) if values and None not in values else None


def record(name: str, pred_dir: Path, weights: Path = WEIGHTS_DIR, gt_dir: Path | None = None, notes: str = "",
           root: Path = SUBMISSIONS, today: dt.date | None = None) -> dict:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", name):
        raise SubmissionError(f"name {name!r}: use letters, digits, '.', '_' and '-' only")
    board = read_leaderboard(root)
    if name in set(board["name"]):
        raise SubmissionError(f"a submission named {name!r} is already recorded; choose another name")
    folders, problems = find_bundles(weights)
    if problems:
        raise SubmissionError("; ".join(problems))
    manifests = {f: read_manifest(f) for f in folders}
    tasks = {f: task_from_dict(m["task"], str(f), training=False) for f, m in manifests.items()}
    csvs = [pred_dir / task.output.file for task in tasks.values()]
    missing = [str(p) for p in csvs if not p.exists()]
    if missing:
        raise SubmissionError(f"missing {', '.join(missing)}: run python run.py first")
    local = score_folder(pred_dir, gt_dir, list(tasks.values())) if gt_dir else {}
    unscored = [f"{t}: {entry['error']}" for t, entry in local.items() if t != "overall" and "error" in entry]
    if unscored:
        raise SubmissionError(f"not recorded, a task cannot be scored against {gt_dir}: {'; '.join(unscored)}")
    date = (today or dt.date.today()).isoformat()
    folder = root / f"{date}-{name}"
    staging = root / f".{folder.name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for output in csvs:  # a CSV, or a segmentation task's folder of masks
        (shutil.copytree if output.is_dir() else shutil.copy2)(output, staging / output.name)
    oof = {}
    for bundle_folder, task in tasks.items():
        shutil.copy2(bundle_folder / MANIFEST, staging / f"{task.name}_{MANIFEST}")
        oof[task.name] = (manifests[bundle_folder].get("cv") or {}).get("oof_score_tuned_rule")
    local_scores = {t: entry["scores"]["score"] for t, entry in local.items() if t != "overall"}
    row = {"name": name, "date": date, "commit": git_commit(),
           **{f"oof_{t}": v for t, v in oof.items()}, "oof_overall": _mean(oof.values()),
           **{f"local_{t}": v for t, v in local_scores.items()},
           "local_overall": _mean(local_scores.values()) if local_scores else None,
           "public_score": None, "notes": notes, "folder": folder.relative_to(root).as_posix()}
    write_json(staging / "submission.json", {**row, "local_report": local})
    staging.rename(folder)
    _write_leaderboard(pd.concat([board, pd.DataFrame([row])], ignore_index=True), root)
    return row


def set_public(name: str, score: float, root: Path = SUBMISSIONS) -> None:
    board = read_leaderboard(root)
    if name not in set(board["name"]):
        raise SubmissionError(f"no submission named {name!r}; recorded: {', '.join(board['name']) or 'none'}")
    board["public_score"] = board["public_score"].astype(object)
    board.loc[board["name"] == name, "public_score"] = float(score)
    _write_leaderboard(board, root)


def plot(out: Path, root: Path = SUBMISSIONS) -> Path:
    """OOF score (x) against the public score (dots) and the local score (crosses) of every submission that
    has an OOF score and either of the others."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    board = read_leaderboard(root)
    for column in ("oof_overall", "public_score", "local_overall"):
        board[column] = pd.to_numeric(board[column], errors="coerce")
    board = board[board["oof_overall"].notna() & (board["public_score"].notna() | board["local_overall"].notna())]
    if board.empty:
        raise SubmissionError("no submission has an OOF score and a public or local score yet: "
                              "record with --gt, or python -m model.submissions public NAME SCORE")
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    x = board["oof_overall"]
    public, local = board["public_score"], board["local_overall"]
    if public.notna().any():
        ax.scatter(x[public.notna()], public[public.notna()], color="tab:blue", label="public leaderboard")
    if local.notna().any():
        ax.scatter(x[local.notna()], local[local.notna()], marker="x", color="tab:orange", label="local (labelled set)")
    for name, xi, yi in zip(board["name"], x, public.fillna(local)):
        ax.annotate(name, (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ys = pd.concat([public.dropna(), local.dropna()])
    low, high = min(x.min(), ys.min()) - 0.02, max(x.max(), ys.max()) + 0.02
    ax.plot([low, high], [low, high], ":", color="grey", label="CV = test")
    ax.set_xlabel("OOF overall score (CV)")
    ax.set_ylabel("test score")
    ax.set_title(f"Does CV track the test scores? ({len(board)} submissions)")
    ax.legend(fontsize=8)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m model.submissions", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("record", help="archive the current CSVs and bundle manifests")
    r.add_argument("name")
    r.add_argument("--pred-dir", type=Path, default=PROJECT, help="where the CSVs are (default: the project folder)")
    r.add_argument("--weights", type=Path, default=WEIGHTS_DIR)
    r.add_argument("--gt", type=Path, help="ground-truth folder (e.g. a labelled test set) for a local score")
    r.add_argument("--notes", default="")
    s = sub.add_parser("public", help="enter the public leaderboard score of a submission")
    s.add_argument("name")
    s.add_argument("score", type=float)
    g = sub.add_parser("plot", help="plot OOF score against leaderboard and local scores")
    g.add_argument("--out", type=Path, default=SUBMISSIONS / "cv_vs_lb.png")
    sub.add_parser("list", help="print the leaderboard")
    args = p.parse_args(argv)
    if args.command == "record":
        print(json.dumps(record(args.name, args.pred_dir, args.weights, args.gt, args.notes), indent=2, default=str))
    elif args.command == "public":
        set_public(args.name, args.score)
        print(f"{args.name}: public score {args.score}")
    elif args.command == "plot":
        print(f"wrote {plot(args.out)}")
    else:
        print(read_leaderboard().to_string(index=False))
    return 0


if __name__ == "__main__":
    import model.kinds  # noqa: F401  (the entry point registers the task kinds)
    sys.exit(guarded(main))
