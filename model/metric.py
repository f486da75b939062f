"""The task metric: one function per kind, used for early stopping, model selection, decision-rule tuning,
tuning studies and the local scorer alike.

A task file names its metric (``metric:``):

* ``competition`` (default), the BI-RADS competition's formula:
  single-label ``0.6 * accuracy + 0.4 * macro-F1``; multi-label, the mean over labels of
  ``0.6 * accuracy + 0.4 * F1 of the positive class``.
* ``accuracy``, ``macro_f1``, ``balanced_accuracy`` (mean recall over classes; for a multi-label task the
  mean over labels of (sensitivity + specificity) / 2) and ``auc`` (one-vs-rest, macro; the mean
  over labels for a multi-label task). AUC needs probabilities; every other metric scores labels.

Macro-F1 averages over the classes that occur in the ground truth or the predictions (scikit-learn's
default, zero_division=0), as the BI-RADS organisers' scorer does; tests check these functions against
scikit-learn. A prediction of -1 means "no prediction": always wrong, never a class of its own. Labels
equal to UNKNOWN in a multi-label ground truth are left out of that label.
"""
from __future__ import annotations

import numpy as np

ACC_WEIGHT, F1_WEIGHT = 0.6, 0.4
METRICS = ("competition", "accuracy", "macro_f1", "balanced_accuracy", "auc")
UNKNOWN = -1  # a multi-label training or ground-truth label that is not known
BINARY_VALUES = {"0": 0, "1": 1, "0.0": 0, "1.0": 1}


def binary_label(text: str) -> int | None:
    """A yes/no label as label files and CSVs write it: 0 or 1, UNKNOWN when empty, None when it is neither
    (the caller reports it)."""
    text = text.strip()
    return UNKNOWN if text == "" else BINARY_VALUES.get(text)


def binary_f1(true_pos: np.ndarray, pred_pos: np.ndarray) -> float:
    tp = np.sum(true_pos & pred_pos)
    denominator = np.sum(true_pos) + np.sum(pred_pos)
    return float(2 * tp / denominator) if denominator else 0.0


def binary_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of ``scores`` for the 0/1 ``y_true`` (ties count half); NaN when one class is absent."""
    y_true, scores = np.asarray(y_true).astype(bool), np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y_true.sum()), int((~y_true).sum())
    if not n_pos or not n_neg:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    sorted_scores = scores[order]
    # Tied scores share their mean rank.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    stops = np.r_[starts[1:], len(scores)]
    for a, b in zip(starts, stops):
        if b - a > 1:
            ranks[order[a:b]] = (a + 1 + b) / 2
    return float((ranks[y_true].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def binary_rates(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """Sensitivity (recall of 1), specificity (recall of 0), precision and F1 for 0/1 arrays."""
    y_true, y_pred = np.asarray(y_true) == 1, np.asarray(y_pred) == 1
    tp, fn = np.sum(y_true & y_pred), np.sum(y_true & ~y_pred)
    tn, fp = np.sum(~y_true & ~y_pred), np.sum(~y_true & y_pred)
    ratio = lambda a, b: float(a / (a + b)) if a + b else float("nan")  # noqa: E731
    return {"sensitivity": ratio(tp, fn), "specificity": ratio(tn, fp), "precision": ratio(tp, fp),
            "f1": binary_f1(y_true, y_pred)}


def _nanmean(values) -> float:
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def single_label_scores(y_true, y_pred, probs=None, metric: str = "competition") -> dict:
    """``score`` (the chosen metric) and its parts for class ids ``y_true`` / ``y_pred`` (N,);
    ``probs`` (N, classes) adds ``auc``. Computed from one confusion matrix: the decision-rule search
    calls this thousands of times."""
    y_true = np.asarray(y_true).reshape(-1).astype(np.int64)
    y_pred = np.asarray(y_pred).reshape(-1).astype(np.int64)
    if not y_true.size:
        return {"accuracy": float("nan"), "macro_f1": 0.0, "balanced_accuracy": float("nan"), "score": float("nan")}
    k = int(max(y_true.max(), y_pred.max())) + 1
    predicted = y_pred >= 0
    confusion = np.bincount(y_true[predicted] * k + y_pred[predicted], minlength=k * k).reshape(k, k)
    hits, true_counts, pred_counts = np.diag(confusion), np.bincount(y_true, minlength=k), confusion.sum(0)
    acc = float(hits.sum() / y_true.size)
    seen = (true_counts + pred_counts) > 0                # classes in the truth or the predictions
    macro_f1 = float(np.mean(2 * hits[seen] / (true_counts[seen] + pred_counts[seen])))
    present = true_counts > 0
    balanced = float(np.mean(hits[present] / true_counts[present]))
    out = {"accuracy": acc, "macro_f1": macro_f1, "balanced_accuracy": balanced}
    if probs is not None:
        probs = np.asarray(probs, dtype=np.float64)
        if probs.shape[1] == 2:
            out["auc"] = binary_auc(y_true == 1, probs[:, 1])
        else:
            out["auc"] = _nanmean([binary_auc(y_true == c, probs[:, c]) for c in range(probs.shape[1])])
    out["score"] = _pick(metric, out, competition=ACC_WEIGHT * acc + F1_WEIGHT * macro_f1)
    return out


def label_scores(y_true, y_pred, probs=None) -> dict:
    """The parts of one binary label's score, UNKNOWN ground truth left out."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    known = y_true != UNKNOWN
    y_true, y_pred = y_true[known], y_pred[known]
    if y_true.size == 0:
        nan = float("nan")
        return {"competition": nan, "accuracy": nan, "f1": nan, "balanced_accuracy": nan, "n": 0}
    acc = float(np.mean(y_true == y_pred))
    rates = binary_rates(y_true, y_pred)
    out = {"competition": ACC_WEIGHT * acc + F1_WEIGHT * rates["f1"], "accuracy": acc, "f1": rates["f1"],
           "balanced_accuracy": _nanmean([rates["sensitivity"], rates["specificity"]]), "n": int(y_true.size)}
    if probs is not None:
        out["auc"] = binary_auc(y_true == 1, np.asarray(probs)[known])
    return out


def multi_label_scores(y_true, y_pred, names, probs=None, metric: str = "competition") -> dict:
    """``score`` (the mean of the chosen metric over labels) and each label's parts under ``labels``;
    ``y_true``/``y_pred`` are (N, labels), ``probs`` (N, labels) adds ``auc``."""
    n = len(names)
    y_true, y_pred = np.asarray(y_true).reshape(-1, n), np.asarray(y_pred).reshape(-1, n)
    parts = {name: label_scores(y_true[:, j], y_pred[:, j], None if probs is None else np.asarray(probs)[:, j])
             for j, name in enumerate(names)}
    for part in parts.values():
        part["score"] = _pick(metric, {**part, "macro_f1": part["f1"]}, competition=part["competition"])
    out = {key: _nanmean([p.get(key, float("nan")) for p in parts.values()])
           for key in ("accuracy", "balanced_accuracy") + (("auc",) if probs is not None else ())}
    out["macro_f1"] = _nanmean([p["f1"] for p in parts.values()])
    out["score"] = _nanmean([p["score"] for p in parts.values()])
    out["labels"] = parts
    return out


def _pick(metric: str, parts: dict, competition: float) -> float:
    if metric == "competition":
        return competition
    if metric not in parts:
        raise ValueError(f"metric {metric!r} needs probabilities" if metric == "auc" else f"unknown metric {metric!r}")
    return parts[metric]


def overall_score(task_scores) -> float:
    """The mean of the tasks' scores: for BI-RADS, 0.5 * cla + 0.5 * fea."""
    return float(np.mean(list(task_scores)))
