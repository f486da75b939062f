"""Folds made once per dataset, saved under folds/<dataset>/<task>_folds.csv and reused.

Each row is keyed by the image's path relative to the dataset root plus a hash of its content, so a file
that was added, removed or changed is noticed and training stops with a message instead of silently
mixing folds.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from ..atomic import atomic_path
from ..data import Sample
from ..tasks import UNKNOWN, Task

FOLDS_DIR = Path(__file__).resolve().parents[2] / "folds"


class FoldsMismatchError(ValueError):
    pass


def content_hash(path: Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()[:16]


def split(task: Task, samples: list[Sample], n_folds: int, seed: int) -> np.ndarray:
    """Fold id per sample: stratified by class for cla, multilabel-stratified over the features for fea."""
    labels = np.array([s.labels for s in samples])
    fold = np.full(len(samples), -1)
    if task.multilabel:
        from iterstrat.ml_stratifiers import MultilabelStratifiedKFold
        splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        # Unknown labels stratify as negatives: they are few, and every image still gets a fold.
        targets = np.where(labels == UNKNOWN, 0, labels)
    else:
        counts = np.bincount(labels[:, 0])
        if counts[counts > 0].min() < n_folds:
            raise ValueError(f"a class has fewer than {n_folds} images ({counts.tolist()}); lower n_folds")
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        targets = labels[:, 0]
    for k, (_, val) in enumerate(splitter.split(np.zeros(len(samples)), targets)):
        fold[val] = k
    return fold


def folds_file(task: Task, dataset: str, folds_dir: Path = FOLDS_DIR) -> Path:
    return folds_dir / dataset / f"{task.name}_folds.csv"


def load_or_make_folds(task: Task, samples: list[Sample], dataset: str, n_folds: int, seed: int,
                       folds_dir: Path = FOLDS_DIR) -> np.ndarray:
    path = folds_file(task, dataset, folds_dir)
    hashes = [content_hash(s.path) for s in samples]
    if not path.is_file():
        fold = split(task, samples, n_folds, seed)
        frame = pd.DataFrame({"key": [s.key for s in samples], "sha1": hashes, "fold": fold})
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, index=False)
        return fold
    saved = pd.read_csv(path, dtype={"key": str, "sha1": str, "fold": int})
    saved_map = dict(zip(saved["key"], zip(saved["sha1"], saved["fold"])))
    current = {s.key: h for s, h in zip(samples, hashes)}
    added = sorted(set(current) - set(saved_map))
    removed = sorted(set(saved_map) - set(current))
    changed = sorted(k for k in set(current) & set(saved_map) if current[k] != saved_map[k][0])
    if added or removed or changed:
        lines = [f"{label}: {len(keys)} ({', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''})"
                 for label, keys in (("added", added), ("removed", removed), ("changed", changed)) if keys]
        raise FoldsMismatchError(f"{path}: the data no longer matches its folds file; " + "; ".join(lines) +
                                 f". Delete {path} to make new folds (older runs' OOF scores then no longer compare), "
                                 "or pass --set dataset=NAME to keep both.")
    if saved["fold"].max() + 1 != n_folds:
        raise FoldsMismatchError(f"{path}: made for {saved['fold'].max() + 1} folds, not {n_folds}; "
                                 f"delete it or use --set n_folds={saved['fold'].max() + 1}")
    return np.array([saved_map[s.key][1] for s in samples])
