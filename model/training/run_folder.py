"""The run folder's layout, in one place: every path of a run and of each of its folds, and the fold's
``done.json`` record, its one writer.

RUN_DIR/ (``RunFolder``)
  task.yaml        the task definition the run trains (a folder of another task is refused)
  config.yaml      the recipe (a folder trained with another recipe is refused)
  samples.csv      key, fold, group and the label columns of every training image
  train.log        the log of every run into the folder
  FAILED           present while the last run into the folder failed: why, and how to resume
  probe/           the baseline on the run's folds: heads.npz (the linear probe's heads, cached), oof.npy
  fold<k>/         one per fold (``FoldFolder``):
    last.pt        everything needed to resume (model, EMA, optimizer, scheduler, scaler, epoch, history;
                   plain tensors and numbers, read back with ``weights_only=True``); gone once the fold is done
    best.pt        the self-describing checkpoint of the selected epoch
    oof.npy        its validation probabilities, in samples.csv's order within the fold
    history.json   one entry per epoch: epoch, train_loss, val_score, lr, seconds
    done.json      the fold's record, written last, so a fold is finished exactly when it exists:
                   fold, selected_epoch (0: the probe's network), score (the validation score of the
                   selected epoch, neutral decision rule), log_vars (the loss's learned task weights, when
                   it has any), epochs_run, n_val, precision, seconds_per_epoch (None without epochs), and
                   under torchrun processes and global_batch_size
    curves.png     the training curves
  oof.csv, metrics.json   the finished folds' out-of-fold probabilities and scores, the decision rule
  errors.png, and the kind's own files (confusion.png; dice.png and masks.npz; pr.png and boxes.npy)

Epochs count from 1 everywhere. Several processes may train different folds into one RUN_DIR.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..atomic import atomic_path, write_json


def save_array(path: Path, array: np.ndarray) -> None:
    """``array`` as .npy at ``path``, atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


class FoldFolder:
    """RUN_DIR/fold<k>/: one fold's files."""

    def __init__(self, run_dir: Path, fold: int):
        self.fold = int(fold)
        self.path = Path(run_dir) / f"fold{self.fold}"
        self.last = self.path / "last.pt"
        self.best = self.path / "best.pt"
        self.oof = self.path / "oof.npy"
        self.history = self.path / "history.json"
        self.done = self.path / "done.json"
        self.curves = self.path / "curves.png"

    def is_done(self) -> bool:
        return self.done.is_file()

    def read_done(self) -> dict | None:
        """The fold's record, or None while the fold is not finished."""
        return read_json(self.done) if self.is_done() else None

    def finish(self, record: dict) -> None:
        """Write the record (the fold is finished from here on) and drop the resume state it no longer needs."""
        write_json(self.done, record)
        self.last.unlink(missing_ok=True)

    def save_oof(self, probs: np.ndarray) -> None:
        save_array(self.oof, probs)

    def load_oof(self) -> np.ndarray:
        return np.load(self.oof)

    def write_history(self, history: list[dict]) -> None:
        write_json(self.history, history)

    def read_history(self) -> list[dict]:
        return read_json(self.history)


def done_record(fold: int, selected_epoch: int, score: float, epochs_run: int, n_val: int, precision: str,
                seconds_per_epoch: float | None, log_vars: list | None = None, processes: int | None = None,
                global_batch_size: int | None = None) -> dict:
    """A fold's done.json record, its keys in the order the module's docstring gives."""
    record = {"fold": fold, "selected_epoch": selected_epoch, "score": score}
    if log_vars is not None:
        record["log_vars"] = log_vars
    record.update(epochs_run=epochs_run, n_val=n_val, precision=precision, seconds_per_epoch=seconds_per_epoch)
    if processes is not None:
        record.update(processes=processes, global_batch_size=global_batch_size)
    return record


class RunFolder:
    """RUN_DIR: the run's own files, and its folds' through ``fold(k)``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.task_file = self.root / "task.yaml"
        self.config_file = self.root / "config.yaml"
        self.samples = self.root / "samples.csv"
        self.log_file = self.root / "train.log"
        self.failed = self.root / "FAILED"
        self.probe_heads = self.root / "probe" / "heads.npz"
        self.probe_oof = self.root / "probe" / "oof.npy"
        self.oof_csv = self.root / "oof.csv"
        self.metrics = self.root / "metrics.json"
        self.gallery = self.root / "errors.png"

    def fold(self, k: int) -> FoldFolder:
        return FoldFolder(self.root, k)

    def any_epoch_trained(self) -> bool:
        """Whether any fold has a finished epoch (or is the probe's): then the folder is worth keeping."""
        return any(self.root.glob("fold*/history.json"))
