"""A run's summary: the finished folds' out-of-fold scores before and after the decision rule, the probe's
beside them, oof.csv, metrics.json and the plots."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..atomic import atomic_path, write_json
from ..decision import tune_rule
from .results import covered_rows, gather_oof
from .run_folder import RunFolder

log = logging.getLogger("train")


def summarise(run_dir: str | Path) -> dict:
    """OOF probabilities of the finished folds, scores before and after the decision rule, plots."""
    run = RunFolder(run_dir)
    run_dir = run.root
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
    if run.probe_oof.is_file():
        metrics["probe"] = _probe_scores(task, np.load(run.probe_oof)[covered].astype(task.kind.prob_dtype),
                                         labels, frame["fold"].to_numpy()[covered])
        metrics["gain_over_probe"] = metrics["oof_tuned_rule"]["score"] - metrics["probe"]["oof_tuned_rule"]
    oof_frame = frame[["key", "fold"]].copy()
    for column, values in task.kind.oof_columns(task, probs).items():
        oof_frame[column] = values
    with atomic_path(run.oof_csv) as tmp:
        oof_frame.to_csv(tmp, index=False)
    write_json(run.metrics, metrics)
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
        log.info("%s OOF %s of the %s on the same folds: %.4f (%+.4f for this recipe)", task.name,
                 task.metric, task.kind.baseline_name, metrics["probe"]["oof_tuned_rule"], metrics["gain_over_probe"])
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
