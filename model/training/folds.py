"""Folds made once per dataset, saved under folds/<dataset>/<task>_folds.csv and reused.

Each row is keyed by the image's path relative to the dataset root plus a hash of its content, so a file
that was added, removed or changed is noticed and training stops with a message instead of silently
mixing folds. Stratification is the task kind's (model.kinds). Images of one group (a patient id from the
task's reader) never go to different folds, nor do byte-identical images: a duplicate in two folds leaks
the answer into validation.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import atomic_path
from ..readers import Sample

FOLDS_DIR = Path(__file__).resolve().parents[2] / "folds"
log = logging.getLogger("train")


class FoldsMismatchError(ValueError):
    pass


def content_hash(path: Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()[:16]


def duplicate_sets(hashes: list[str]) -> list[list[int]]:
    """Indices of byte-identical images, one list per content seen more than once."""
    by_hash: dict[str, list[int]] = {}
    for i, h in enumerate(hashes):
        by_hash.setdefault(h, []).append(i)
    return [indices for indices in by_hash.values() if len(indices) > 1]


def group_ids(samples: list[Sample], hashes: list[str]) -> np.ndarray | None:
    """One group id per image: the reader's group, with byte-identical images merged into one group.
    None when every group holds a single image (plain stratified folds)."""
    parent = list(range(len(samples)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[object, int] = {}
    for i, sample in enumerate(samples):
        for key in ((("group", sample.group),) if sample.group is not None else ()) + (("hash", hashes[i]),):
            if key in first:
                parent[find(i)] = find(first[key])
            else:
                first[key] = i
    roots = np.array([find(i) for i in range(len(samples))])
    return roots if len(np.unique(roots)) < len(samples) else None


def grouped_multilabel_split(targets: np.ndarray, groups: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Fold id per image with whole groups per fold and each label's positives spread evenly.

    Written here because no kept library does it (scikit-learn's StratifiedGroupKFold is single-label,
    iterstrat has no groups): groups go, largest first (ties in a seeded random order), to the fold where
    they add least to the squared distance between each fold's image and positive counts and an even share.
    """
    unique, inverse = np.unique(groups, return_inverse=True)
    if len(unique) < n_folds:
        raise ValueError(f"{len(unique)} groups cannot make {n_folds} folds; lower n_folds")
    counts = np.bincount(inverse).astype(np.float64)
    positives = np.zeros((len(unique), targets.shape[1]))
    np.add.at(positives, inverse, targets)
    want = np.concatenate([[counts.sum()], positives.sum(0)]) / n_folds
    scale = np.maximum(want, 1.0)
    rng = np.random.default_rng(seed)
    order = sorted(rng.permutation(len(unique)), key=lambda g: -counts[g])
    have = np.zeros((n_folds, 1 + targets.shape[1]))
    group_fold = np.empty(len(unique), dtype=np.int64)
    for g in order:
        add = np.concatenate([[counts[g]], positives[g]])
        cost = (((have + add - want) / scale) ** 2).sum(1) - (((have - want) / scale) ** 2).sum(1)
        k = int(np.argmin(cost + 1e-9 * have[:, 0]))  # equal cost: the fold with fewer images
        group_fold[g] = k
        have[k] += add
    return group_fold[inverse]


def folds_file(task, dataset: str, folds_dir: Path = FOLDS_DIR) -> Path:
    return folds_dir / dataset / f"{task.name}_folds.csv"


def make_folds(task, samples: list[Sample], hashes: list[str], n_folds: int, seed: int) -> np.ndarray:
    groups = group_ids(samples, hashes)
    if groups is not None and len(np.unique(groups)) < n_folds:
        raise ValueError(f"{len(np.unique(groups))} groups cannot make {n_folds} folds; lower n_folds")
    return task.kind.split(np.array([s.labels for s in samples]), groups, n_folds, seed)


def load_or_make_folds(task, samples: list[Sample], hashes: list[str], dataset: str, n_folds: int, seed: int,
                       folds_dir: Path = FOLDS_DIR) -> np.ndarray:
    """Fold id per sample, read from the dataset's folds file, or made now and saved there."""
    path = folds_file(task, dataset, folds_dir)
    if not path.is_file():
        fold = make_folds(task, samples, hashes, n_folds, seed)
        with atomic_path(path) as tmp:
            pd.DataFrame({"key": [s.key for s in samples], "sha1": hashes, "fold": fold}).to_csv(tmp, index=False)
        log.info("%s: made %d folds and saved them to %s", task.name, n_folds, path)
        return fold
    saved = pd.read_csv(path, dtype={"key": str, "sha1": str, "fold": int}, keep_default_na=False)
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
    log.info("%s: folds read from %s", task.name, path)
    return np.array([saved_map[s.key][1] for s in samples])
