import numpy as np
import pytest

from model.decision import MIN_IMAGES, tune_rule
from model.metric import label_scores, single_label_scores
from tests.helpers import CLA_TASK, FEA_TASK, generic_task


def test_tuned_thresholds_beat_half_on_a_constructed_case():
    # An under-confident model: positives score 0.3-0.45, negatives 0.05-0.35, on every feature.
    rng = np.random.default_rng(0)
    labels = (rng.random((400, 4)) < 0.2).astype(int)
    probs = np.where(labels == 1, rng.uniform(0.3, 0.45, labels.shape), rng.uniform(0.05, 0.35, labels.shape))
    rule, report = tune_rule(FEA_TASK, probs, labels)
    assert report["adopted"] and report["held_out_score"] > report["neutral_score"] + 0.1
    for j, t in enumerate(rule["thresholds"]):
        assert 0.28 <= t <= 0.37
        gain = label_scores(labels[:, j], probs[:, j] >= t)["competition"] - label_scores(labels[:, j], probs[:, j] >= 0.5)["competition"]
        assert gain > 0.1


def test_tuned_offsets_beat_argmax_on_a_constructed_case():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 6, 600)
    logits = rng.normal(0, 1, (600, 6))
    logits[np.arange(600), labels] += 1.5
    logits[:, 5] -= 2.0                       # the model under-predicts class 5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    rule, report = tune_rule(CLA_TASK, probs, labels[:, None])
    assert report["adopted"] and rule["logit_offsets"][5] > 1.0
    tuned = CLA_TASK.decide(probs, rule)
    assert single_label_scores(labels, tuned)["score"] > single_label_scores(labels, probs.argmax(1))["score"] + 0.05


def test_a_rule_that_only_fits_noise_is_not_kept():
    # Calibrated probabilities scored by accuracy: argmax is the best rule, so whatever tuning finds is noise.
    task = generic_task(heads=tuple("abcdef"), metric="accuracy")
    kept = 0
    for seed in range(10):
        rng = np.random.default_rng(seed)
        probs = rng.dirichlet(np.ones(6) * 0.7, 150)
        labels = np.array([rng.choice(6, p=p) for p in probs])[:, None]
        rule, report = tune_rule(task, probs, labels)
        assert report["in_sample_score"] > report["neutral_score"]  # tuning always looks good where it was fitted
        kept += report["adopted"]
        if not report["adopted"]:
            assert rule == task.neutral_rule() and "on the other fifth" in report["why"]
    assert kept <= 2                                                # without the check: 10 of 10


def test_no_rule_is_tuned_on_too_few_images_or_for_auc():
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(6), MIN_IMAGES - 1)
    rule, report = tune_rule(CLA_TASK, probs, rng.integers(0, 6, (MIN_IMAGES - 1, 1)))
    assert rule == CLA_TASK.neutral_rule() and f"only {MIN_IMAGES - 1} out-of-fold images" in report["why"]
    task = generic_task(metric="auc")
    rule, report = tune_rule(task, rng.dirichlet(np.ones(2), 100), rng.integers(0, 2, (100, 1)))
    assert rule == task.neutral_rule() and "AUC does not depend" in report["why"]


def test_a_binary_task_tunes_a_threshold_on_the_positive_class():
    rng = np.random.default_rng(4)
    labels = (rng.random(500) < 0.15).astype(int)
    p = np.where(labels == 1, rng.uniform(0.2, 0.6, 500), rng.uniform(0.0, 0.3, 500))
    task = generic_task()
    rule, report = tune_rule(task, np.c_[1 - p, p], labels[:, None])
    offset = rule["logit_offsets"][1] - rule["logit_offsets"][0]
    threshold = 1 / (1 + np.exp(offset))                           # p(positive) above this -> positive
    assert report["adopted"] and 0.2 <= threshold <= 0.32
    assert threshold == pytest.approx(1 / (1 + np.exp(offset)))
