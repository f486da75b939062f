"""The competition metric, the one function used for early stopping, model selection, decision-rule
tuning, tuning studies and the local scorer alike.

    cla     = 0.6 * accuracy + 0.4 * macro-F1 over the 6 classes
    fea     = mean over the 4 features of (0.6 * accuracy + 0.4 * F1 of the positive class)
    overall = 0.5 * cla + 0.5 * fea

Macro-F1 averages over the classes that occur in the ground truth or the predictions (scikit-learn's
default, zero_division=0), as the organisers' scorer does; tests check these functions against
scikit-learn. A prediction of -1 means "no prediction": always wrong, never a class of its own. Feature
labels equal to UNKNOWN in the ground truth are left out of that feature.
"""
from __future__ import annotations

import numpy as np
from .tasks import FEATURES, UNKNOWN

ACC_WEIGHT, F1_WEIGHT = 0.6, 0.4


def binary_f1(true_pos: np.ndarray, pred_pos: np.ndarray) -> float:
    tp = np.sum(true_pos & pred_pos)
    denominator = np.sum(true_pos) + np.sum(pred_pos)
    return float(2 * tp / denominator) if denominator else 0.0


def cla_score(y_true, y_pred) -> dict:
    y_true, y_pred = np.asarray(y_true).reshape(-1), np.asarray(y_pred).reshape(-1)
    acc = float(np.mean(y_true == y_pred)) if y_true.size else float("nan")
    classes = np.union1d(y_true, y_pred[y_pred >= 0])
    macro_f1 = float(np.mean([binary_f1(y_true == c, y_pred == c) for c in classes])) if classes.size else 0.0
    return {"score": ACC_WEIGHT * acc + F1_WEIGHT * macro_f1, "accuracy": acc, "macro_f1": macro_f1}


def feature_score(y_true, y_pred) -> dict:
    """0.6 * accuracy + 0.4 * positive-class F1 for one binary feature, UNKNOWN labels left out."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    known = y_true != UNKNOWN
    y_true, y_pred = y_true[known], y_pred[known]
    if y_true.size == 0:
        return {"score": float("nan"), "accuracy": float("nan"), "f1": float("nan"), "n": 0}
    acc = float(np.mean(y_true == y_pred))
    f1 = binary_f1(y_true == 1, y_pred == 1)
    return {"score": ACC_WEIGHT * acc + F1_WEIGHT * f1, "accuracy": acc, "f1": f1, "n": int(y_true.size)}


def fea_score(y_true, y_pred) -> dict:
    """Mean of the four feature scores; ``y_true`` and ``y_pred`` are (N, 4)."""
    y_true, y_pred = np.asarray(y_true).reshape(-1, len(FEATURES)), np.asarray(y_pred).reshape(-1, len(FEATURES))
    parts = {name: feature_score(y_true[:, i], y_pred[:, i]) for i, name in enumerate(FEATURES)}
    scores = [p["score"] for p in parts.values() if p["n"]]
    return {"score": float(np.mean(scores)) if scores else float("nan"), "features": parts}


def overall_score(cla: float, fea: float) -> float:
    return 0.5 * cla + 0.5 * fea


def task_score(task_name: str, y_true, y_pred) -> dict:
    """The score of one task by name: ``cla_score`` or ``fea_score``."""
    return cla_score(y_true, y_pred) if task_name == "cla" else fea_score(y_true, y_pred)
