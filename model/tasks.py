"""The two competition tasks: what their heads are called and how probabilities become labels."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# Label 0..5 in memory is the BI-RADS category below; raw label files say 1..6.
CLA_CLASSES = ("2", "3", "4A", "4B", "4C", "5")
CLA_FOLDERS = tuple(f"{c}类" for c in CLA_CLASSES)
FEATURES = ("boundary", "calcification", "direction", "shape")
UNKNOWN = -1  # a feature label that is empty or missing in the training data


@dataclass(frozen=True)
class Task:
    """One competition task.

    ``heads`` are the output names: the six classes for ``cla``, the four features for ``fea``.
    ``multilabel`` selects sigmoid outputs with per-head thresholds instead of a softmax.
    """

    name: str
    heads: tuple[str, ...]
    multilabel: bool

    @property
    def num_outputs(self) -> int:
        return len(self.heads)

    @property
    def label_columns(self) -> tuple[str, ...]:
        """Columns of the prediction / ground-truth CSV after the id column."""
        return self.heads if self.multilabel else ("label",)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=-1)

    def default_rule(self) -> dict:
        """The neutral decision rule: argmax for cla, 0.5 for every feature."""
        if self.multilabel:
            return {"thresholds": [0.5] * self.num_outputs}
        return {"logit_offsets": [0.0] * self.num_outputs}

    def decide(self, probs: np.ndarray, rule: dict | None = None) -> np.ndarray:
        """Labels from averaged probabilities: (N,) class ids for cla, (N, 4) 0/1 for fea."""
        rule = rule or self.default_rule()
        probs = np.asarray(probs, dtype=np.float64)
        if self.multilabel:
            return (probs >= np.asarray(rule["thresholds"])).astype(np.int64)
        return np.argmax(np.log(np.clip(probs, 1e-12, 1.0)) + np.asarray(rule["logit_offsets"]), axis=1)


CLA = Task("cla", CLA_CLASSES, multilabel=False)
FEA = Task("fea", FEATURES, multilabel=True)
TASKS = {task.name: task for task in (CLA, FEA)}
