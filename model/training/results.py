"""Reading a run folder back: its task and samples, and the finished folds' out-of-fold probabilities and
records (model.training.run_folder gives the layout)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ..task import task_from_dict
from .run_folder import RunFolder


def read_run(run_dir: str | Path):
    """(task, samples frame) of a run folder; a clear error for a folder that is not one."""
    run = RunFolder(run_dir)
    if not run.task_file.is_file() or not run.samples.is_file():
        raise ValueError(f"{run.root}: not a run folder (no task.yaml and samples.csv). Pass the folder that "
                         "training wrote, such as runs/<task>-<dataset>")
    task = task_from_dict(yaml.safe_load(run.task_file.read_text(encoding="utf-8")), str(run.task_file))
    return task, pd.read_csv(run.samples, dtype={"key": str}, keep_default_na=False)


def gather_oof(run_dir: str | Path):
    """(task, samples frame, OOF probabilities with NaN rows for unfinished folds, finished folds' records).
    The probabilities are (N, heads) for a classification task, (N, classes, H, W) maps for segmentation."""
    task, frame = read_run(run_dir)
    run = RunFolder(run_dir)
    n_folds = int(frame["fold"].max()) + 1
    probs, per_fold = None, []
    for k in range(n_folds):
        folder = run.fold(k)
        if folder.is_done():
            fold = folder.load_oof()
            if probs is None:
                probs = np.full((len(frame), *fold.shape[1:]), np.nan, dtype=task.kind.prob_dtype)
            probs[frame["fold"].to_numpy() == k] = fold
            per_fold.append(folder.read_done())
    if probs is None:
        probs = np.full((len(frame), len(task.heads)), np.nan)
    return task, frame, probs, per_fold


def covered_rows(probs: np.ndarray) -> np.ndarray:
    """The images whose fold is finished (their OOF probabilities are not NaN)."""
    return ~np.isnan(probs.reshape(len(probs), -1)[:, 0])
