"""What a task package hands the engine: its task, default recipe and loss."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from torch import nn

from ..tasks import Task
from .config import TrainConfig

# make_loss(cfg, train_targets, train_masks) -> module called as loss(logits, targets, masks)
LossFactory = Callable[[TrainConfig, np.ndarray, np.ndarray], nn.Module]


@dataclass(frozen=True)
class TaskSpec:
    task: Task
    defaults: TrainConfig
    make_loss: LossFactory
    sample_weights: Callable[[TrainConfig, np.ndarray], np.ndarray | None] = lambda cfg, targets: None
