"""A training run: read and check the data, make or reuse folds, fit the baseline and train the selected
folds, then summarise whatever folds are finished (model.training.summary); ``export``
(model.training.export_run) freezes it. The run folder's layout is model.training.run_folder's.

Every data problem (a bad label, a broken image) is reported together before the run folder is made; a run
that fails later is marked with a FAILED file until it succeeds.
"""
from __future__ import annotations

import logging
import shutil
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from ..atomic import atomic_path, write_text
from ..device import resolve_device
from ..images import ImageReadError, load_rgb
from ..network import input_norm
from ..readers import DatasetError, read_dataset
from . import distributed
from .config import TrainConfig, differing_keys, read_config, save_config, selected_folds
from .dataset import build_cache
from .engine import resolve_workers, train_fold
from .folds import FOLDS_DIR, content_hash, duplicate_sets, load_or_make_folds
from .results import gather_oof
from .run_folder import RunFolder
from .summary import summarise

log = logging.getLogger("train")
PROJECT = Path(__file__).resolve().parents[2]


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
    handler = logging.FileHandler(RunFolder(run_dir).log_file, encoding="utf-8")
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
    if result.dropped or result.clipped:
        log.info("%s: %d box(es) dropped (no width or height) and %d clipped to their image, each named above",
                 task.name, len(result.dropped), len(result.clipped))
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
    run = RunFolder(run_dir)
    if run.task_file.is_file():
        previous = yaml.safe_load(run.task_file.read_text(encoding="utf-8"))
        if previous != task.to_dict():
            raise ValueError(f"{run_dir} holds a run of another task definition ({previous.get('name')!r}); "
                             "use another --out")
    if run.config_file.is_file():
        changed = differing_keys(read_config(run.config_file, task.kind), cfg)
        if changed:
            raise ValueError(f"{run_dir} was trained with a different recipe ({', '.join(changed)} differ). "
                             "Use another --out, or the same settings to resume.")
    else:
        write_text(run.task_file, yaml.safe_dump(task.to_dict(), sort_keys=False, allow_unicode=True))
        save_config(cfg, run.config_file, task.kind)
    return run_dir, created


def assign_folds(task, cfg: TrainConfig, samples, hashes, run_dir: Path) -> np.ndarray:
    """Fold ids from the dataset's folds file (made now if absent), copied into RUN_DIR/samples.csv."""
    fold_ids = load_or_make_folds(task, samples, hashes, cfg.dataset, cfg.n_folds, cfg.seed,
                                  Path(cfg.folds_dir) if cfg.folds_dir else FOLDS_DIR)
    frame = pd.DataFrame({"key": [s.key for s in samples], "fold": fold_ids,
                          "group": [s.group if s.group is not None else "" for s in samples]})
    for j, column in enumerate(task.kind.label_columns(task.heads)):
        frame[column] = [s.labels[j] for s in samples]
    with atomic_path(RunFolder(run_dir).samples) as tmp:
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
    RunFolder(run_dir).failed.unlink(missing_ok=True)
    return metrics


def _mark_failed(run_dir: Path, created: bool, error: BaseException) -> None:
    """A run folder made by this call with nothing trained is removed; any other is marked FAILED."""
    run = RunFolder(run_dir)
    if created and not run.any_epoch_trained():
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    reason = "interrupted" if isinstance(error, KeyboardInterrupt) else f"{type(error).__name__}: {error}"
    advice = "Do what it says, then rerun" if isinstance(error, ValueError) else "Rerun"
    write_text(run.failed, f"{reason}\n{advice} the same command to resume; finished epochs are kept.\n")
