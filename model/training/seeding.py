"""Determinism in one place: global seeds, DataLoader worker seeds, the augmentation pipeline's seed.

Each epoch reseeds from (seed, fold, epoch), so a run that is interrupted and resumed repeats an
uninterrupted one. Limits: with the same seed, machine and library versions, CPU runs repeat exactly;
CUDA kernels (cuDNN autotuning, atomics in backward passes) make GPU runs close but not bit-identical.
"""
from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def loader_generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def worker_init_fn(worker_id: int) -> None:
    """Give each worker its own stream, derived from the loader's seeded generator."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    dataset = torch.utils.data.get_worker_info().dataset
    if hasattr(dataset, "reseed"):
        dataset.reseed(seed)
