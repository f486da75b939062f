"""The two kinds of classification task: single-label (one class per image) and multi-label (several
yes/no labels per image, some of them unknown).

``Classification`` holds what both share (one probability per head, a CSV of one row per image, scoring
that CSV, confusion matrices and the error gallery); each subclass decides what differs: probabilities
from logits, labels from probabilities (the decision rule and its neutral value), training targets and the
loss, the metric and its parts, fold stratification, the class prior and the CSV values.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..metric import METRICS, UNKNOWN, binary_auc, binary_label, binary_rates, multi_label_scores, single_label_scores
from ..registry import register
from .base import Kind, fold_ids


class Classification(Kind):
    """One probability per head and image; one CSV row per image."""

    metrics = METRICS
    default_metric = "competition"
    # The image-level recipe: the probe, the classifier head's start and dropout, layer decay, CutMix.
    recipe_keys = frozenset({"recipe", "probe_c", "head_init", "layer_decay", "drop_rate", "cutmix_p"})
    rule_key = ""
    neutral_value = 0.0

    @property
    def rule_grid(self) -> dict:
        return {self.rule_key: self.grid}

    def neutral_rule(self, n_heads: int) -> dict:
        return {self.rule_key: [self.neutral_value] * n_heads}

    def write_outputs(self, task, out_dir: Path, images, prediction, rule: dict, id_mode: str | None = None) -> Path:
        """The task's CSV in ``out_dir``, one row per image, labels from ``rule``."""
        from ..outputs.tables import write_predictions
        path = Path(out_dir) / task.output.file
        write_predictions(path, task, images, self.decide(prediction.probs, rule), prediction.probs, id_mode)
        return path

    def validate_output(self, path: Path, task, images) -> list[str]:
        """What run.py --check finds wrong with a written CSV (header, ids in order, allowed values)."""
        from ..outputs.tables import validate_csv
        return validate_csv(path, task, images)

    def score_outputs(self, task, pred_dir: Path, gt_dir: Path):
        """model.score's result for this task, or None when ``gt_dir`` holds no ground truth for it."""
        from ..outputs.tables import score_csv_task
        return score_csv_task(task, pred_dir, gt_dir)

    def plot_oof(self, run_dir: Path, task, truth, probs, rule: dict, fold_ids, score: float) -> None:
        """confusion.png: the OOF confusion matrices with the rule kept."""
        from ..training.plots import plot_confusion
        plot_confusion(run_dir / "confusion.png", task, truth, self.decide(probs, rule), score)

    def draw_gallery(self, run_dir: Path, task, truth, probs, fold_ids, rule: dict, images, norm) -> None:
        """errors.png: the most confident OOF mistakes, with Grad-CAM."""
        from ..training.gallery import write_gallery
        write_gallery(run_dir, task, images, truth, probs, fold_ids, rule, norm)

    def probe_advice(self, task, cfg) -> str:
        """What to do when the probe beat the fine-tuned recipe."""
        return (f"train the probe as the model (python train.py --task {task.source} --data {cfg.data or 'DIR'} "
                f"--set recipe=probe --out {cfg.out}-probe), then export that run folder")

    def run_baseline(self, task, cfg, cache, hashes, labels, targets, masks, fold_ids, run_dir: Path, device) -> dict:
        """The linear probe on the run's folds (model.training.probe.run_probe); its heads per fold."""
        from ..training.probe import run_probe
        return run_probe(task, cfg, cache, hashes, labels, targets, masks, fold_ids, run_dir, device)


@register
class SingleLabel(Classification):
    """Softmax over the classes; the decision rule adds one offset per class to the log-probabilities."""

    name = "single-label"
    heads_key, min_heads = "classes", 2       # what a task file lists, and how many at least
    rule_key = "logit_offsets"
    neutral_value = 0.0
    grid = np.round(np.arange(-3.0, 3.0001, 0.1), 1)
    label_layout, binary_positive = "class", True
    probe_activation = "softmax"
    output_values = ("labels", "names", "probabilities")
    recipe_keys = Classification.recipe_keys | {"imbalance"}
    defaults = {"imbalance": "weights"}

    def probabilities(self, logits):
        return logits.softmax(dim=-1)

    def label_columns(self, heads) -> list[str]:
        """Label columns of a run's samples.csv: one class id per image."""
        return ["label"]

    def output_columns(self, heads, values: str) -> list[str]:
        """The default label columns of the output CSV: one class column, or one probability per class."""
        return list(heads) if values == "probabilities" else ["label"]

    def decide(self, probs: np.ndarray, rule: dict | None = None) -> np.ndarray:
        """(N,) class ids: argmax of log-probability plus each class's offset."""
        probs = np.asarray(probs, dtype=np.float64)
        offsets = np.asarray((rule or self.neutral_rule(probs.shape[1]))[self.rule_key])
        return np.argmax(np.log(np.clip(probs, 1e-12, 1.0)) + offsets, axis=1)

    def scores(self, task, labels, predicted, probs=None) -> dict:
        return single_label_scores(np.asarray(labels).reshape(-1), predicted, probs, task.metric)

    def details(self, task, labels, predicted, probs) -> dict:
        """Per-class F1 and the confusion matrix; for a binary task also AUC, sensitivity and specificity
        of the positive class."""
        from sklearn.metrics import confusion_matrix
        labels = np.asarray(labels).reshape(-1)
        classes = range(len(task.heads))
        out = {"per_class_f1": {task.heads[c]: binary_rates(labels == c, predicted == c)["f1"] for c in classes},
               "confusion": confusion_matrix(labels, predicted, labels=list(classes)).tolist()}
        if len(task.heads) == 2:
            positive = task.positive_index
            out["binary"] = {"positive": task.heads[positive],
                             **binary_rates(labels == positive, predicted == positive),
                             "auc": binary_auc(labels == positive, probs[:, positive])}
        return out

    def encode(self, labels: np.ndarray, n_heads: int) -> tuple[np.ndarray, np.ndarray]:
        """One-hot targets and an all-ones mask."""
        targets = np.eye(n_heads, dtype=np.float32)[np.asarray(labels).reshape(-1)]
        return targets, np.ones_like(targets)

    def head_counts(self, labels: np.ndarray, n_heads: int) -> np.ndarray:
        return np.bincount(np.asarray(labels).reshape(-1), minlength=n_heads)

    def prior(self, labels: np.ndarray, n_heads: int) -> list[float]:
        counts = np.bincount(np.asarray(labels).reshape(-1), minlength=n_heads)
        return (counts / counts.sum()).tolist()

    def split(self, labels: np.ndarray, groups: np.ndarray | None, n_folds: int, seed: int) -> np.ndarray:
        """Fold id per image, stratified by class, and by group (no group split) when there are groups."""
        from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
        classes = np.asarray(labels).reshape(-1)
        counts = np.bincount(classes)
        if counts[counts > 0].min() < n_folds:
            raise ValueError(f"a class has fewer than {n_folds} images (counts per class: {counts.tolist()}); "
                             "lower n_folds (--set n_folds=3)")
        if groups is None:
            splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(classes, classes)
        else:
            splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(
                classes, classes, groups)
        return fold_ids(splitter, len(classes))

    def format_values(self, task, labels: np.ndarray, probs: np.ndarray) -> list[list]:
        if task.output.values == "probabilities":
            return [[f"{p:.6f}" for p in row] for row in probs]
        if task.output.values == "names":
            return [[task.heads[c]] for c in labels]
        return [[int(c)] for c in labels]

    def parse_values(self, task, column_values: dict[str, list[str]]) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
        """Labels (N,) and probabilities (N, classes) or None from a CSV's columns; -1 and a problem for
        every value that is not allowed."""
        problems: list[str] = []
        if task.output.values == "probabilities":
            probs = _parse_numbers(column_values, task.output.columns, problems, low=0.0, high=1.0)
            return np.where(np.isnan(probs).any(1), -1, np.argmax(np.nan_to_num(probs, nan=-1.0), 1)), probs, problems
        (column,) = task.output.columns
        allowed = {name: i for i, name in enumerate(task.heads)} if task.output.values == "names" \
            else {str(i): i for i in range(len(task.heads))}
        labels = []
        for row, value in enumerate(column_values[column]):
            value = value.strip()
            if value.endswith(".0") and task.output.values != "names":
                value = value[:-2]
            if value not in allowed:
                problems.append(f"row {row + 2}: {column}={value!r} is not one of {sorted(allowed, key=allowed.get)}")
            labels.append(allowed.get(value, -1))
        return np.array(labels, dtype=np.int64), None, problems

    def confusion_panels(self, task, labels, predicted) -> list[tuple[str, np.ndarray, np.ndarray, list[str]]]:
        return [(task.title, np.asarray(labels).reshape(-1), np.asarray(predicted), list(task.heads))]

    def mistakes(self, task, labels, probs, predicted, per_row: int) -> list[tuple[str, list]]:
        """The error gallery's rows: per true class, its images predicted as another, most confident first."""
        truth, rows = np.asarray(labels).reshape(-1), []
        for c, name in enumerate(task.heads):
            wrong = np.flatnonzero((truth == c) & (predicted != c))
            wrong = wrong[np.argsort(-probs[wrong, predicted[wrong]])][:per_row]
            rows.append((f"true {name}", [(i, int(predicted[i]), f"as {task.heads[predicted[i]]} "
                                                                 f"{probs[i, predicted[i]]:.2f}") for i in wrong]))
        return rows

    def make_loss(self, cfg, targets: np.ndarray, masks: np.ndarray):
        from ..training.losses import SoftTargetCrossEntropy, inverse_sqrt_frequency
        weights = inverse_sqrt_frequency(targets) if cfg.imbalance in ("weights", "both") else None
        return SoftTargetCrossEntropy(cfg.label_smoothing, weights, targets.shape[1])

    def sample_weights(self, cfg, targets: np.ndarray) -> np.ndarray | None:
        if cfg.imbalance not in ("sampler", "both"):
            return None
        from ..training.losses import inverse_sqrt_frequency
        return targets @ inverse_sqrt_frequency(targets)


@register
class MultiLabel(Classification):
    """One sigmoid per label; the decision rule is one probability threshold per label."""

    name = "multi-label"
    heads_key, min_heads = "labels", 1
    rule_key = "thresholds"
    neutral_value = 0.5
    grid = np.round(np.arange(0.02, 0.9801, 0.01), 2)
    label_layout = "columns"
    probe_activation = "sigmoid"
    output_values = ("labels", "probabilities")
    recipe_keys = Classification.recipe_keys | {"label_weights", "soft_f1_weight", "task_weighting"}
    defaults = {"soft_f1_weight": 0.1}

    def probabilities(self, logits):
        return logits.sigmoid()

    def label_columns(self, heads) -> list[str]:
        """Label columns of a run's samples.csv: one 0/1/UNKNOWN column per label."""
        return list(heads)

    def output_columns(self, heads, values: str) -> list[str]:
        return list(heads)

    def decide(self, probs: np.ndarray, rule: dict | None = None) -> np.ndarray:
        """(N, labels) 0/1: each label's probability against its threshold."""
        probs = np.asarray(probs, dtype=np.float64)
        thresholds = np.asarray((rule or self.neutral_rule(probs.shape[1]))[self.rule_key])
        return (probs >= thresholds).astype(np.int64)

    def scores(self, task, labels, predicted, probs=None) -> dict:
        return multi_label_scores(labels, predicted, task.heads, probs, task.metric)

    def details(self, task, labels, predicted, probs) -> dict:
        """Per label: AUC, sensitivity, specificity and the confusion matrix."""
        from sklearn.metrics import confusion_matrix
        labels, out = np.asarray(labels), {}
        for j, name in enumerate(task.heads):
            known = labels[:, j] != UNKNOWN
            out[name] = {**binary_rates(labels[known, j], predicted[known, j]),
                         "auc": binary_auc(labels[known, j] == 1, probs[known, j]),
                         "positives": int((labels[known, j] == 1).sum()), "known": int(known.sum()),
                         "confusion": confusion_matrix(labels[known, j], predicted[known, j], labels=[0, 1]).tolist()}
        return {"per_label": out}

    def encode(self, labels: np.ndarray, n_heads: int) -> tuple[np.ndarray, np.ndarray]:
        """0/1 targets; UNKNOWN labels get target 0 and mask 0 (left out of every loss term)."""
        labels = np.asarray(labels).reshape(-1, n_heads)
        return np.where(labels == UNKNOWN, 0, labels).astype(np.float32), (labels != UNKNOWN).astype(np.float32)

    def prior(self, labels: np.ndarray, n_heads: int) -> list[float]:
        labels = np.asarray(labels).reshape(-1, n_heads)
        return [float(np.mean(labels[labels[:, j] != UNKNOWN, j])) if (labels[:, j] != UNKNOWN).any() else 0.5
                for j in range(n_heads)]

    def split(self, labels: np.ndarray, groups: np.ndarray | None, n_folds: int, seed: int) -> np.ndarray:
        """Fold id per image, multi-label stratified (iterstrat), and by group when there are groups.

        Unknown labels stratify as negatives: every image still gets a fold."""
        return multilabel_fold_ids(np.where(np.asarray(labels) == UNKNOWN, 0, labels), groups, n_folds, seed)

    def format_values(self, task, labels: np.ndarray, probs: np.ndarray) -> list[list]:
        if task.output.values == "probabilities":
            return [[f"{p:.6f}" for p in row] for row in probs]
        return [[int(v) for v in row] for row in labels]

    def parse_values(self, task, column_values: dict[str, list[str]]) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
        """Labels (N, labels), with UNKNOWN for an empty value, and probabilities or None; -1 and a
        problem for every value that is not allowed."""
        problems: list[str] = []
        if task.output.values == "probabilities":
            probs = _parse_numbers(column_values, task.output.columns, problems, low=0.0, high=1.0)
            return np.where(np.isnan(probs), -1, (probs >= 0.5).astype(np.int64)), probs, problems
        columns = []
        for column in task.output.columns:
            values = []
            for row, value in enumerate(column_values[column]):
                label = binary_label(value)
                if label is None:
                    problems.append(f"row {row + 2}: {column}={value.strip()!r} is not 0 or 1")
                    label = -2  # wrong whatever the truth; -1 would read as unknown
                values.append(label)
            columns.append(values)
        return np.array(columns, dtype=np.int64).T.reshape(-1, len(task.output.columns)), None, problems

    def mistakes(self, task, labels, probs, predicted, per_row: int) -> list[tuple[str, list]]:
        """The error gallery's rows: per label, its most confident false positives and negatives, in turn."""
        from itertools import zip_longest
        rows = []
        for j, name in enumerate(task.heads):
            known = labels[:, j] != UNKNOWN
            false_pos = np.flatnonzero(known & (labels[:, j] == 0) & (predicted[:, j] == 1))
            false_neg = np.flatnonzero(known & (labels[:, j] == 1) & (predicted[:, j] == 0))
            false_pos = false_pos[np.argsort(-probs[false_pos, j])]
            false_neg = false_neg[np.argsort(probs[false_neg, j])]
            picked = [i for pair in zip_longest(false_pos, false_neg) for i in pair if i is not None][:per_row]
            rows.append((name, [(i, j, f"{'false +' if labels[i, j] == 0 else 'false -'} p={probs[i, j]:.2f}")
                                for i in picked]))
        return rows

    def confusion_panels(self, task, labels, predicted) -> list[tuple[str, np.ndarray, np.ndarray, list[str]]]:
        labels = np.asarray(labels)
        panels = []
        for j, name in enumerate(task.heads):
            known = labels[:, j] != UNKNOWN
            panels.append((name, labels[known, j], np.asarray(predicted)[known, j], ["0", "1"]))
        return panels

    def make_loss(self, cfg, targets: np.ndarray, masks: np.ndarray):
        from ..training.losses import MaskedMultiLabelLoss, auto_label_weights
        if cfg.label_weights == ["auto"]:
            weights = auto_label_weights(targets, masks)
        elif len(cfg.label_weights) == targets.shape[1]:
            weights = np.asarray(cfg.label_weights, dtype=np.float64)
        else:
            raise ValueError(f"label_weights must be 'auto' or {targets.shape[1]} numbers, one per label")
        return MaskedMultiLabelLoss(cfg.label_smoothing, weights, cfg.soft_f1_weight, cfg.task_weighting == "uncertainty")

    def sample_weights(self, cfg, targets: np.ndarray) -> np.ndarray | None:
        return None


def multilabel_fold_ids(targets: np.ndarray, groups: np.ndarray | None, n_folds: int, seed: int) -> np.ndarray:
    """Fold id per image, stratified by its 0/1 columns (iterstrat), whole groups per fold when there are groups."""
    if groups is not None:
        from ..training.folds import grouped_multilabel_split
        return grouped_multilabel_split(targets, groups, n_folds, seed)
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold
    if len(targets) < n_folds:
        raise ValueError(f"{len(targets)} images cannot make {n_folds} folds; lower n_folds")
    splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return fold_ids(splitter.split(np.zeros(len(targets)), targets), len(targets))


def _parse_numbers(column_values: dict[str, list[str]], columns, problems: list[str], low: float, high: float) -> np.ndarray:
    out = []
    for column in columns:
        values = []
        for row, value in enumerate(column_values[column]):
            try:
                number = float(value)
            except ValueError:
                number = float("nan")
            if not low <= number <= high:
                problems.append(f"row {row + 2}: {column}={value!r} is not a probability")
                number = float("nan")
            values.append(number)
        out.append(values)
    return np.array(out, dtype=np.float64).T.reshape(-1, len(columns))

