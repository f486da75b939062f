"""The detection baseline beside every run: the same detector with its encoder frozen, trained for a fifth
of the recipe's epochs (at least one) on the same folds. It tells whether full training paid: a recipe that
does not beat a pyramid and heads trained on fixed ImageNet features has not learnt the images.

"Frozen" is the encoder's learning rate at 0 (``backbone_lr``): its weights do not move, its batch-norm
statistics still follow the images, as a linear probe's features would not. Its folds train through the
same engine (model.training.engine.train_fold) into RUN_DIR/probe/fold<k>, so they resume like any fold.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np

from .engine import train_fold
from .run_folder import RunFolder, save_array

log = logging.getLogger("train")


def run_frozen_baseline(task, cfg, cache, labels, targets, masks, fold_ids: np.ndarray, run_dir: Path) -> np.ndarray:
    """Train the frozen-encoder detector on every fold; save and return its OOF predictions."""
    started = time.perf_counter()
    run = RunFolder(run_dir)
    brief = dataclasses.replace(cfg, epochs=max(1, cfg.epochs // 5), backbone_lr=0.0, ema_decay=0.0,
                                select_epoch="last", warmup_epochs=0.0)
    probe_dir = run.probe_oof.parent
    oof = None
    for fold in np.unique(fold_ids):
        train_fold(task, brief, cache, targets, masks, labels, fold_ids, int(fold), probe_dir)
        fold_oof = RunFolder(probe_dir).fold(int(fold)).load_oof()
        if oof is None:
            oof = np.zeros((len(fold_ids), *fold_oof.shape[1:]), task.kind.prob_dtype)
        oof[fold_ids == fold] = fold_oof
    save_array(run.probe_oof, oof)
    log.info("%s: frozen-encoder baseline (%d epochs per fold) on %d folds in %.1fs", task.name, brief.epochs,
             len(np.unique(fold_ids)), time.perf_counter() - started)
    return oof
