"""A training run: read and check the data, make or reuse folds, train the selected folds, then gather
whatever folds are finished into out-of-fold metrics, a decision rule and plots; ``export`` freezes it.

RUN_DIR holds task.yaml (the task definition), config.yaml, samples.csv (key, labels, fold), train.log,
fold<k>/, oof.csv, metrics.json, curves and confusion plots. Several processes may train different folds
into one RUN_DIR. Every data problem (a bad label, a broken image) is reported together before the run
folder is made; a run that fails later is marked with a FAILED file until it succeeds.
"""
from __future__ import annotations

import json
import logging
import shutil
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from ..atomic import atomic_path, write_json, write_text
from ..bundle import WEIGHTS_DIR
from ..checkpoint import load_checkpoint
from ..decision import tune_rule
from ..device import resolve_device
from ..errors import BundleError
from ..export import export_bundle
from ..images import ImageReadError, load_rgb
from ..network import input_norm
from ..readers import DatasetError, read_dataset
from ..task import task_from_dict
from . import distributed
from .config import TrainConfig, differing_keys, portable, read_config, save_config, selected_folds
from .dataset import build_cache
from .engine import resolve_workers, train_fold
from .folds import FOLDS_DIR, content_hash, duplicate_sets, load_or_make_folds

log = logging.getLogger("train")
PROJECT = Path(__file__).resolve().parents[2]
BACKUPS = PROJECT / "runs" / "replaced-bundles"


def default_run_dir(task, cfg: TrainConfig) -> Path:
    return PROJECT / "runs" / f"{task.name}-{cfg.dataset}"


class _Recorder(logging.Handler):
    """Keeps the records logged before the run folder exists, to write them into train.log."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@contextmanager
def logging_to(handler: logging.Handler):
    """Send INFO and above to ``handler`` for the duration."""
    root = logging.getLogger()
    previous = root.level
    root.setLevel(min(previous, logging.INFO) if previous else logging.INFO)
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


@contextmanager
def run_log(run_dir: Path, earlier: list[logging.LogRecord] = ()):
    """Copy log messages (and ``earlier`` ones) into RUN_DIR/train.log while the run is being worked on."""
    handler = logging.FileHandler(run_dir / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    for record in earlier:
        handler.handle(record)
    try:
        with logging_to(handler):
            yield
    finally:
        handler.close()


def prepare_data(task, cfg: TrainConfig, decoders: int = 0):
    """Read the data and decode every image once; (dataset root, samples, image cache, content hashes).

    Label problems and unreadable images are reported together in one DatasetError, so a user fixes the
    data in one pass."""
    root, result = read_dataset(task, cfg.data)
    cache, errors = build_cache(result.samples, cfg.img_size, cfg.cache_scale, decoders, task.kind.crop_border,
                                task.mask_values)
    for path in result.unlabelled:  # images whose labels were refused: is the image itself readable?
        try:
            load_rgb(path)
        except ImageReadError as e:
            errors.append(str(e))
    problems = result.problems + errors + _unusable_names(result.samples)
    if problems:
        raise DatasetError(f"{root}: {len(problems)} problem(s) in the {task.name} training data; fix them and rerun:",
                           problems)
    if not result.samples:
        raise DatasetError(f"{root}: no training images found for {task.name}", [])
    counts = task.kind.head_counts(np.array([s.labels for s in result.samples]), len(task.heads))
    empty = [head for head, count in zip(task.heads, counts) if count == 0]
    if empty and not cfg.allow_missing_classes:
        raise DatasetError(f"{root}: {task.kind.heads_key} {', '.join(map(repr, empty))} of {task.name} have no "
                           f"training image ({len(result.samples)} images read). Add images of them, remove them "
                           f"from the task file's {task.kind.heads_key}:, or train all the same with "
                           "--set allow_missing_classes=true (their scores then mean nothing)",
                           [f"{head}: 0 images" for head in empty])
    hashes = [content_hash(s.path) for s in result.samples]
    for indices in duplicate_sets(hashes):
        names = [result.samples[i].key for i in indices]
        labels = {result.samples[i].labels for i in indices}
        log.warning("byte-identical images %s: kept in one fold%s", ", ".join(names),
                    "; their labels differ, so at least one is wrong: fix it or remove the images" if len(labels) > 1 else "")
    return root, result.samples, cache, hashes


def _unusable_names(samples) -> list[str]:
    """A file name that is not UTF-8 cannot go into samples.csv or a folds file: reported with the rest."""
    problems = []
    for sample in samples:
        try:
            sample.key.encode("utf-8")
        except UnicodeEncodeError:
            shown = sample.key.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            problems.append(f"{shown}: file name is not valid UTF-8; rename it")
    return problems


def open_run(task, cfg: TrainConfig) -> tuple[Path, bool]:
    """The run folder and whether this call made it; refuse a folder that holds another task or recipe."""
    run_dir = Path(cfg.out) if cfg.out else default_run_dir(task, cfg)
    cfg.out = str(run_dir)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / "task.yaml").is_file():
        previous = yaml.safe_load((run_dir / "task.yaml").read_text(encoding="utf-8"))
        if previous != task.to_dict():
            raise ValueError(f"{run_dir} holds a run of another task definition ({previous.get('name')!r}); "
                             "use another --out")
    if (run_dir / "config.yaml").is_file():
        changed = differing_keys(read_config(run_dir / "config.yaml", task.kind), cfg)
        if changed:
            raise ValueError(f"{run_dir} was trained with a different recipe ({', '.join(changed)} differ). "
                             "Use another --out, or the same settings to resume.")
    else:
        write_text(run_dir / "task.yaml", yaml.safe_dump(task.to_dict(), sort_keys=False, allow_unicode=True))
        save_config(cfg, run_dir / "config.yaml", task.kind)
    return run_dir, created


def assign_folds(task, cfg: TrainConfig, samples, hashes, run_dir: Path) -> np.ndarray:
    """Fold ids from the dataset's folds file (made now if absent), copied into RUN_DIR/samples.csv."""
    fold_ids = load_or_make_folds(task, samples, hashes, cfg.dataset, cfg.n_folds, cfg.seed,
                                  Path(cfg.folds_dir) if cfg.folds_dir else FOLDS_DIR)
    frame = pd.DataFrame({"key": [s.key for s in samples], "fold": fold_ids,
                          "group": [s.group if s.group is not None else "" for s in samples]})
    for j, column in enumerate(task.kind.label_columns(task.heads)):
        frame[column] = [s.labels[j] for s in samples]
    with atomic_path(run_dir / "samples.csv") as tmp:
        frame.to_csv(tmp, index=False)
    return fold_ids


def train(task, cfg: TrainConfig, report=None) -> dict | None:
    """Train the folds ``cfg.folds`` selects (finished ones are skipped) and summarise the run. Under torchrun
    every process trains each fold's share (model.training.distributed); rank 0 returns the summary, the
    others None."""
    if distributed.launched():
        cfg.device = distributed.device_for(cfg.device)   # this process's own GPU, or the CPU
    device = resolve_device(cfg.device)  # a missing GPU is reported before minutes of decoding
    with distributed.process_group(cfg.device):
        return _train(task, cfg, device, report)


def _train(task, cfg: TrainConfig, device, report=None) -> dict | None:
    folds = selected_folds(cfg)
    main = distributed.is_main()
    with logging_to(_Recorder()) as recorder:
        root, samples, cache, hashes = prepare_data(task, cfg, resolve_workers(cfg.workers, torch.device("cpu")))
    cfg.dataset = cfg.dataset or root.name
    with distributed.main_first():   # rank 0 makes the run folder and the folds file; the others read them
        run_dir, created = open_run(task, cfg)
        fold_ids = assign_folds(task, cfg, samples, hashes, run_dir)
    try:
        with run_log(run_dir, recorder.records) if main else nullcontext():
            log.info("%s: %d images from %s, folds %s, run folder %s", task.name, len(samples), root,
                     ",".join(map(str, folds)), run_dir)
            labels = task.kind.truth(samples, cache)
            targets, masks = task.kind.encode(labels, len(task.heads))
            heads = {}
            with distributed.main_first():   # the others need the probe only to start from it (cached)
                if main:
                    task.kind.save_truth(run_dir, labels)
                if main or cfg.head_init == "probe":
                    heads = task.kind.run_baseline(task, cfg, cache, hashes, labels, targets, masks, fold_ids,
                                                   run_dir, device)
            for fold in folds if cfg.recipe == "finetune" else ():
                train_fold(task, cfg, cache, targets, masks, labels, fold_ids, fold, run_dir,
                           report=(lambda epoch, score, f=fold: report(f, epoch, score)) if report else None,
                           head=heads[fold] if cfg.head_init == "probe" else None)
            if not main:
                return None
            metrics = summarise(run_dir)
            if not metrics["folds_missing"]:
                _, frame, probs, _ = gather_oof(run_dir)
                task.kind.draw_gallery(run_dir, task, labels, probs, fold_ids, metrics["rule"], cache.eval,
                                       input_norm(cfg.backbone, cfg.input_norm))
    except BaseException as e:
        if main:
            _mark_failed(run_dir, created, e)
        raise
    (run_dir / "FAILED").unlink(missing_ok=True)
    return metrics


def _mark_failed(run_dir: Path, created: bool, error: BaseException) -> None:
    """A run folder made by this call with nothing trained is removed; any other is marked FAILED."""
    if created and not any(run_dir.glob("fold*/history.json")):
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    reason = "interrupted" if isinstance(error, KeyboardInterrupt) else f"{type(error).__name__}: {error}"
    advice = "Do what it says, then rerun" if isinstance(error, ValueError) else "Rerun"
    write_text(run_dir / "FAILED", f"{reason}\n{advice} the same command to resume; finished epochs are kept.\n")


def read_run(run_dir: str | Path):
    """(task, samples frame) of a run folder; a clear error for a folder that is not one."""
    run_dir = Path(run_dir)
    if not (run_dir / "task.yaml").is_file() or not (run_dir / "samples.csv").is_file():
        raise ValueError(f"{run_dir}: not a run folder (no task.yaml and samples.csv). Pass the folder that "
                         "training wrote, such as runs/<task>-<dataset>")
    task = task_from_dict(yaml.safe_load((run_dir / "task.yaml").read_text(encoding="utf-8")), str(run_dir / "task.yaml"))
    return task, pd.read_csv(run_dir / "samples.csv", dtype={"key": str}, keep_default_na=False)


def gather_oof(run_dir: Path):
    """(task, samples frame, OOF probabilities with NaN rows for unfinished folds, finished folds' summaries).
    The probabilities are (N, heads) for a classification task, (N, classes, H, W) maps for segmentation."""
    task, frame = read_run(run_dir)
    n_folds = int(frame["fold"].max()) + 1
    probs, per_fold = None, []
    for k in range(n_folds):
        if (run_dir / f"fold{k}" / "done.json").is_file():
            fold = np.load(run_dir / f"fold{k}" / "oof.npy")
            if probs is None:
                probs = np.full((len(frame), *fold.shape[1:]), np.nan, dtype=task.kind.prob_dtype)
            probs[frame["fold"].to_numpy() == k] = fold
            per_fold.append(json.loads((run_dir / f"fold{k}" / "done.json").read_text()))
    if probs is None:
        probs = np.full((len(frame), len(task.heads)), np.nan)
    return task, frame, probs, per_fold


def covered_rows(probs: np.ndarray) -> np.ndarray:
    """The images whose fold is finished (their OOF probabilities are not NaN)."""
    return ~np.isnan(probs.reshape(len(probs), -1)[:, 0])


def summarise(run_dir: str | Path) -> dict:
    """OOF probabilities of the finished folds, scores before and after the decision rule, plots."""
    run_dir = Path(run_dir)
    task, frame, probs, per_fold = gather_oof(run_dir)
    done = [f["fold"] for f in per_fold]
    missing = [k for k in range(int(frame["fold"].max()) + 1) if k not in done]
    if not done:
        raise ValueError(f"{run_dir}: no finished fold yet; train first")
    covered = covered_rows(probs)
    labels, oof = task.kind.load_truth(run_dir, frame, task)[covered], probs[covered]
    rule, rule_report = tune_rule(task, oof, labels)
    metrics = {"task": task.name, "metric": task.metric, "folds_done": done, "folds_missing": missing,
               "n_oof": int(covered.sum()), "n_images": len(frame), "per_fold": per_fold,
               "oof_default_rule": _scores(task, labels, oof, task.neutral_rule()),
               "oof_tuned_rule": _scores(task, labels, oof, rule), "rule": rule, "rule_report": rule_report}
    if (run_dir / "probe" / "oof.npy").is_file():
        metrics["probe"] = _probe_scores(task, np.load(run_dir / "probe" / "oof.npy")[covered].astype(task.kind.prob_dtype),
                                         labels, frame["fold"].to_numpy()[covered])
        metrics["gain_over_probe"] = metrics["oof_tuned_rule"]["score"] - metrics["probe"]["oof_tuned_rule"]
    oof_frame = frame[["key", "fold"]].copy()
    for column, values in task.kind.oof_columns(task, probs).items():
        oof_frame[column] = values
    with atomic_path(run_dir / "oof.csv") as tmp:
        oof_frame.to_csv(tmp, index=False)
    write_json(run_dir / "metrics.json", metrics)
    from .plots import plot_curves
    plot_curves(run_dir, task, done)
    task.kind.plot_oof(run_dir, task, labels, oof, rule, frame["fold"].to_numpy()[covered],
                       metrics["oof_tuned_rule"]["score"])
    if missing:
        log.warning("%s: folds %s are not finished; OOF covers %d of %d images", run_dir, missing,
                    covered.sum(), len(frame))
    if rule_report["adopted"]:
        log.info("%s OOF %s: %.4f with the neutral rule, %.4f with the tuned rule, kept (%s)", task.name, task.metric,
                 metrics["oof_default_rule"]["score"], metrics["oof_tuned_rule"]["score"], rule_report["why"])
    else:
        log.info("%s OOF %s: %.4f with the neutral rule, kept (%s)", task.name, task.metric,
                 metrics["oof_default_rule"]["score"], rule_report["why"])
    if "probe" in metrics:
        log.info("%s OOF %s of the linear probe on the same folds: %.4f (%+.4f for this recipe)", task.name,
                 task.metric, metrics["probe"]["oof_tuned_rule"], metrics["gain_over_probe"])
    return metrics


def _probe_scores(task, probs: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> dict:
    """The probe's OOF score on the images the run covers, with the neutral rule and with its own rule."""
    rule, _ = tune_rule(task, probs, labels)
    per_fold = [float(task.kind.scores(task, labels[folds == k], task.decide(probs[folds == k]), probs[folds == k])["score"])
                for k in np.unique(folds)]
    return {"oof_default_rule": task.kind.scores(task, labels, task.decide(probs), probs)["score"],
            "oof_tuned_rule": task.kind.scores(task, labels, task.decide(probs, rule), probs)["score"],
            "per_fold": per_fold}


def _scores(task, labels: np.ndarray, probs: np.ndarray, rule: dict) -> dict:
    predicted = task.decide(probs, rule)
    return {**task.kind.scores(task, labels, predicted, probs), **task.kind.details(task, labels, predicted, probs)}


def export(run_dir: str | Path, out: str | Path | None = None, folds: list[int] | None = None,
           force: bool = False, expect_task: str | None = None) -> Path:
    """Freeze the finished folds of a run (or the subset ``folds``) into a bundle (default
    model/weights/<task>/). The decision rule and CV scores always come from every finished fold's OOF."""
    run_dir = Path(run_dir)
    task, frame = read_run(run_dir)
    if expect_task and task.name != expect_task:
        raise ValueError(f"{run_dir} is a run of task {task.name!r}, not {expect_task!r}: "
                         f"export it with python train.py export {run_dir}")
    metrics = summarise(run_dir)
    chosen = metrics["folds_done"] if folds is None else folds
    unfinished = sorted(set(chosen) - set(metrics["folds_done"]))
    if unfinished:
        raise ValueError(f"{run_dir}: folds {unfinished} are not finished; finished: {metrics['folds_done']}")
    checkpoints = [load_checkpoint(run_dir / f"fold{k}" / "best.pt") for k in chosen]
    cfg = read_config(run_dir / "config.yaml", task.kind)
    labels = task.kind.load_truth(run_dir, frame, task)
    recipe = {k: v for k, v in portable(cfg, task.kind).items() if k not in ("backbone", "img_size")}  # those live in network
    manifest = {
        "task": task.to_dict(),
        "decision": metrics["rule"],
        "prior": task.kind.prior(labels, len(task.heads)),
        "cv": {"metric": task.metric, "oof_score_default_rule": metrics["oof_default_rule"]["score"],
               "oof_score_tuned_rule": metrics["oof_tuned_rule"]["score"], "rule": metrics["rule_report"],
               "folds_done": metrics["folds_done"], "folds_missing": metrics["folds_missing"],
               "n_oof": metrics["n_oof"], "n_images": metrics["n_images"], "folds_in_bundle": sorted(chosen)},
        "trained_on": {"dataset": cfg.dataset, "images": int(len(frame)),
                       "license": cfg.data_license or "not given: see the data's licence"},
        "recipe": recipe,
    }
    target = Path(out) if out else WEIGHTS_DIR / task.name
    try:
        folder = export_bundle(target, checkpoints, manifest, replace=force, backups=BACKUPS)
    except BundleError as e:
        raise ValueError(str(e)) from None
    from ..onnx_backend import record_graph
    record_graph(folder)
    if metrics["folds_missing"]:
        log.warning("exported %d fold(s); folds %s are missing", len(checkpoints), metrics["folds_missing"])
    return folder
