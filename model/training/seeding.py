"""Determinism in one place: the global seeds of an epoch (dropout, initialisation).

The data's randomness (order, augmentation) travels with the sampler's (seed, index) pairs
(model.training.dataset.EpochSampler), derived from (seed, fold, epoch): it does not depend on the number
of loader workers, and a run that is interrupted and resumed repeats an uninterrupted one. Limits: with
the same seed, machine and library versions, CPU runs repeat exactly; CUDA kernels (cuDNN autotuning,
atomics in backward passes) make GPU runs close but not bit-identical.
"""
from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
