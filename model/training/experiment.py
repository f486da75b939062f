"""A training run: read the data, make or reuse folds, train the selected folds, then gather whatever
folds are finished into out-of-fold metrics, a tuned decision rule and plots; export freezes it.

RUN_DIR holds config.yaml, samples.csv (key, labels, fold), train.log, fold<k>/, oof.csv, metrics.json,
curves.png and confusion.png. Several processes may train different folds into one RUN_DIR.
"""
from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import atomic_path, write_json
from ..bundle import WEIGHTS_DIR, export_bundle, load_checkpoint
from ..data import dataset_name, read_dataset
from ..decision import tune_rule
from ..metric import binary_f1, cla_score, fea_score
from ..tasks import UNKNOWN
from .config import TrainConfig, build_config, differing_keys, save_config, selected_folds
from .dataset import build_cache, encode_targets
from .engine import train_fold
from .folds import FOLDS_DIR, load_or_make_folds
from .spec import TaskSpec

log = logging.getLogger("train")
PROJECT = Path(__file__).resolve().parents[2]
DATA_LICENSE = ("BrEaST-Lesions_USG, Pawłowska et al., Scientific Data 11, 148 (2024), "
                "doi:10.1038/s41597-024-02984-z, CC BY 4.0")


def default_run_dir(spec: TaskSpec, cfg: TrainConfig) -> Path:
    return PROJECT / "runs" / f"{spec.task.name}-{cfg.dataset}"


@contextmanager
def run_log(run_dir: Path):
    """Copy log messages into RUN_DIR/train.log while the run is being worked on."""
    root = logging.getLogger()
    previous = root.level
    root.setLevel(min(previous, logging.INFO) if previous else logging.INFO)
    handler = logging.FileHandler(run_dir / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
        root.setLevel(previous)


def open_run(spec: TaskSpec, cfg: TrainConfig) -> Path:
    """Resolve the dataset name and run folder; refuse a folder that holds another recipe."""
    if not cfg.data:
        raise ValueError("no training data given: pass --data DIR (the folder with the official layout)")
    if not cfg.dataset:
        cfg.dataset = dataset_name(cfg.data, spec.task)
    run_dir = Path(cfg.out) if cfg.out else default_run_dir(spec, cfg)
    cfg.out = str(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / "config.yaml").is_file():
        previous = build_config(TrainConfig(), run_dir / "config.yaml")
        changed = differing_keys(previous, cfg)
        if changed:
            raise ValueError(f"{run_dir} was trained with a different recipe ({', '.join(changed)} differ). "
                             "Use another --out, or the same settings to resume.")
    else:
        save_config(cfg, run_dir / "config.yaml")
    return run_dir


def assign_folds(spec: TaskSpec, cfg: TrainConfig, samples, run_dir: Path) -> np.ndarray:
    """Fold ids from the dataset's folds file (made now if absent), copied into RUN_DIR/samples.csv."""
    fold_ids = load_or_make_folds(spec.task, samples, cfg.dataset, cfg.n_folds, cfg.seed,
                                  Path(cfg.folds_dir) if cfg.folds_dir else FOLDS_DIR)
    frame = pd.DataFrame({"key": [s.key for s in samples], "fold": fold_ids})
    for j, column in enumerate(spec.task.label_columns):
        frame[column] = [s.labels[j] for s in samples]
    with atomic_path(run_dir / "samples.csv") as tmp:
        frame.to_csv(tmp, index=False)
    return fold_ids


def train(spec: TaskSpec, cfg: TrainConfig, report=None) -> dict:
    """Train the folds ``cfg.folds`` selects (finished ones are skipped) and summarise the run.

    The data is read and every image decoded before folds are made, so a bad file stops the run
    without leaving a folds file behind that would no longer match once it is fixed.
    """
    run_dir = open_run(spec, cfg)
    with run_log(run_dir):
        log.info("%s: folds %s, run folder %s\n%s", spec.task.name, cfg.folds, run_dir,
                 json.dumps(asdict(cfg), ensure_ascii=False))
        samples = read_dataset(cfg.data, spec.task)
        items = build_cache(samples, cfg.img_size, cfg.cache_scale, cfg.workers)
        fold_ids = assign_folds(spec, cfg, samples, run_dir)
        log.info("%s: %d images decoded and cached", spec.task.name, len(samples))
        targets, masks = encode_targets(spec.task, samples)
        labels = np.array([s.labels for s in samples])
        for fold in selected_folds(cfg):
            train_fold(spec, cfg, items, targets, masks, labels, fold_ids, fold, run_dir,
                       report=(lambda epoch, score, f=fold: report(f, epoch, score)) if report else None)
        return summarise(spec, run_dir)


def _labels_of(spec: TaskSpec, frame: pd.DataFrame) -> np.ndarray:
    labels = frame[list(spec.task.label_columns)].to_numpy()
    return labels if spec.task.multilabel else labels[:, 0]


def summarise(spec: TaskSpec, run_dir: str | Path) -> dict:
    """OOF probabilities of the finished folds, scores before and after the tuned rule, plots."""
    task, run_dir = spec.task, Path(run_dir)
    frame = pd.read_csv(run_dir / "samples.csv", dtype={"key": str})
    n_folds = int(frame["fold"].max()) + 1
    done = [k for k in range(n_folds) if (run_dir / f"fold{k}" / "done.json").is_file()]
    missing = [k for k in range(n_folds) if k not in done]
    if not done:
        raise ValueError(f"{run_dir}: no finished fold yet; train first (python -m train_{task.name[:3]} ...)")
    probs = np.full((len(frame), task.num_outputs), np.nan)
    per_fold = []
    for k in done:
        idx = np.flatnonzero(frame["fold"].to_numpy() == k)
        probs[idx] = np.load(run_dir / f"fold{k}" / "oof.npy")
        per_fold.append(json.loads((run_dir / f"fold{k}" / "done.json").read_text()))
    covered = ~np.isnan(probs[:, 0])
    labels = _labels_of(spec, frame)[covered]
    oof = probs[covered]
    rule = tune_rule(task, oof, labels)
    before, after = _scores(spec, labels, task.decide(oof)), _scores(spec, labels, task.decide(oof, rule))
    metrics = {"task": task.name, "folds_done": done, "folds_missing": missing, "n_oof": int(covered.sum()),
               "per_fold": per_fold, "oof_default_rule": before, "oof_tuned_rule": after, "rule": rule}
    oof_frame = frame[["key", "fold"]].copy()
    for j, head in enumerate(task.heads):
        oof_frame[f"p_{head}"] = probs[:, j]
    with atomic_path(run_dir / "oof.csv") as tmp:
        oof_frame.to_csv(tmp, index=False)
    write_json(run_dir / "metrics.json", metrics)
    from .plots import plot_confusion, plot_curves
    plot_curves(run_dir, done)
    plot_confusion(run_dir / "confusion.png", task, labels, task.decide(oof, rule))
    if missing:
        log.warning("%s: folds %s are not finished; OOF covers %d of %d images", run_dir, missing,
                    covered.sum(), len(frame))
    log.info("%s OOF score: %.4f with argmax/0.5, %.4f with the tuned rule %s", task.name, before["score"],
             after["score"], rule)
    return metrics


def _scores(spec: TaskSpec, labels: np.ndarray, predicted: np.ndarray) -> dict:
    from sklearn.metrics import confusion_matrix
    if not spec.task.multilabel:
        scores = cla_score(labels, predicted)
        classes = list(range(spec.task.num_outputs))
        scores["per_class_f1"] = {spec.task.heads[c]: binary_f1(labels == c, predicted == c) for c in classes}
        scores["confusion"] = confusion_matrix(labels, predicted, labels=classes).tolist()
        return scores
    scores = fea_score(labels, predicted)
    for j, name in enumerate(spec.task.heads):
        known = labels[:, j] != UNKNOWN
        scores["features"][name]["confusion"] = confusion_matrix(labels[known, j], predicted[known, j],
                                                                 labels=[0, 1]).tolist()
    return scores


def export(spec: TaskSpec, run_dir: str | Path, out: str | Path | None = None, folds: list[int] | None = None) -> Path:
    """Freeze the finished folds of a run (or the subset ``folds``) into a bundle (default model/weights/<task>/).

    The decision rule and CV scores always come from the OOF predictions of every finished fold.
    """
    run_dir = Path(run_dir)
    metrics = summarise(spec, run_dir)
    chosen = metrics["folds_done"] if folds is None else folds
    unfinished = sorted(set(chosen) - set(metrics["folds_done"]))
    if unfinished:
        raise ValueError(f"{run_dir}: folds {unfinished} are not finished; finished: {metrics['folds_done']}")
    checkpoints = [load_checkpoint(run_dir / f"fold{k}" / "best.pt") for k in chosen]
    frame = pd.read_csv(run_dir / "samples.csv", dtype={"key": str})
    labels = _labels_of(spec, frame)
    if spec.task.multilabel:
        prior = [float(np.mean(labels[labels[:, j] != UNKNOWN, j])) for j in range(labels.shape[1])]
    else:
        prior = (np.bincount(labels, minlength=spec.task.num_outputs) / len(labels)).tolist()
    cfg = build_config(TrainConfig(), run_dir / "config.yaml")
    manifest = {
        "decision": metrics["rule"],
        "prior": prior,
        "cv": {"oof_score_default_rule": metrics["oof_default_rule"]["score"],
               "oof_score_tuned_rule": metrics["oof_tuned_rule"]["score"],
               "folds_done": metrics["folds_done"], "folds_missing": metrics["folds_missing"]},
        "trained_on": {"dataset": cfg.dataset, "images": int(len(frame)),
                       "license": DATA_LICENSE if "breast-lesions-usg" in cfg.dataset.lower() else "see the data's licence"},
        "config": asdict(cfg),
    }
    folder = export_bundle(Path(out) if out else WEIGHTS_DIR / spec.task.name, checkpoints, manifest)
    if metrics["folds_missing"]:
        log.warning("exported %d fold(s); folds %s are missing", len(checkpoints), metrics["folds_missing"])
    return folder
