import dataclasses
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

import run
from model.data import DatasetError, read_cla
from model.decision import tune_logit_offsets, tune_thresholds
from model.metric import cla_score, feature_score
from model.tasks import CLA, FEA
from model.training.cli import main as cli_main
from model.training.dataset import CachedImage, box_cutmix, encode_targets
from model.training.experiment import export, train
from model.training.folds import FoldsMismatchError, load_or_make_folds
from tests.helpers import TEST_BACKBONE, TEST_SIZE, make_cla_data, make_fea_data, make_test_folder, save_image
from train_cls.recipe import SPEC as CLA_SPEC
from train_fea.recipe import SPEC as FEA_SPEC
from train_fea.recipe import MaskedMultiTaskLoss

TINY = dict(backbone=TEST_BACKBONE, pretrained="none", img_size=TEST_SIZE, epochs=2, batch_size=8,
            n_folds=2, workers=0, patience=5)


def tiny_config(spec, tmp_path, data, **extra):
    return dataclasses.replace(spec.defaults, data=str(data), out=str(tmp_path / "run"),
                               folds_dir=str(tmp_path / "folds"), **{**TINY, **extra})


@pytest.fixture(scope="module")
def cla_data(tmp_path_factory):
    return make_cla_data(tmp_path_factory.mktemp("cla"), per_class=4)


@pytest.fixture(scope="module")
def fea_data(tmp_path_factory):
    return make_fea_data(tmp_path_factory.mktemp("fea"), n=16, unknown={"calcification": [1, 2]})


def test_two_fold_cla_run_gives_complete_oof_metrics_and_a_bundle_run_py_uses(tmp_path, cla_data):
    metrics = train(CLA_SPEC, tiny_config(CLA_SPEC, tmp_path, cla_data))
    run_dir = tmp_path / "run"
    assert metrics["folds_done"] == [0, 1] and metrics["folds_missing"] == [] and metrics["n_oof"] == 24
    oof = pd.read_csv(run_dir / "oof.csv")
    assert len(oof) == 24 and not oof.filter(like="p_").isna().any().any()
    saved = json.loads((run_dir / "metrics.json").read_text())
    for key in ("score", "accuracy", "macro_f1", "per_class_f1", "confusion"):
        assert key in saved["oof_tuned_rule"]
    assert saved["oof_tuned_rule"]["score"] >= saved["oof_default_rule"]["score"]
    for name in ("config.yaml", "train.log", "confusion.png", "fold0/curves.png", "fold1/best.pt"):
        assert (run_dir / name).is_file(), name
    assert (tmp_path / f"folds/{cla_data.name}/cla_folds.csv").is_file()

    export(CLA_SPEC, run_dir, tmp_path / "weights/cla")
    manifest = json.loads((tmp_path / "weights/cla/manifest.json").read_text())
    assert manifest["decision"] == saved["rule"] and len(manifest["folds"]) == 2
    assert manifest["prior"] == pytest.approx([1 / 6] * 6)
    assert cli_main(CLA_SPEC, ["export", str(run_dir), "--out", str(tmp_path / "one"), "--folds", "1"]) == 0
    assert [f["fold"] for f in json.loads((tmp_path / "one/manifest.json").read_text())["folds"]] == [1]
    from tests.helpers import make_bundle
    make_bundle(tmp_path / "weights/fea", "fea")
    test_dir = make_test_folder(tmp_path / "testB", n=4)
    assert run.main(["--weights", str(tmp_path / "weights"), "--test-dir", str(test_dir),
                     "--out-dir", str(tmp_path / "out"), "--quiet", "--workers", "0"]) == 0
    assert len(pd.read_csv(tmp_path / "out/cla_pre.csv")) == 4


def test_interrupted_run_resumes_at_the_last_finished_epoch(tmp_path, cla_data):
    cfg = tiny_config(CLA_SPEC, tmp_path, cla_data, epochs=3)

    def stop_after_first_epoch(fold, epoch, score):
        if fold == 1 and epoch == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(CLA_SPEC, dataclasses.replace(cfg), report=stop_after_first_epoch)
    run_dir = tmp_path / "run"
    assert (run_dir / "fold0/done.json").is_file() and (run_dir / "fold1/last.pt").is_file()
    done_before = (run_dir / "fold0/done.json").stat().st_mtime_ns
    first_epoch = json.loads((run_dir / "fold1/history.json").read_text())[0]
    seen = []
    train(CLA_SPEC, dataclasses.replace(cfg), report=lambda f, e, s: seen.append((f, e)))
    assert seen == [(1, 1), (1, 2)]                                  # fold 0 skipped, fold 1 from epoch 1
    assert (run_dir / "fold0/done.json").stat().st_mtime_ns == done_before
    history = json.loads((run_dir / "fold1/history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1, 2] and history[0] == first_epoch
    assert not (run_dir / "fold1/last.pt").exists()
    # The resumed run follows the same trajectory as one that was never interrupted.
    train(CLA_SPEC, dataclasses.replace(cfg, out=str(tmp_path / "straight")))
    straight = json.loads((tmp_path / "straight/fold1/history.json").read_text())
    assert [(h["train_loss"], h["val_score"]) for h in history] == [(h["train_loss"], h["val_score"]) for h in straight]


def test_folds_trained_separately_gather_into_one_run(tmp_path, cla_data):
    cfg = tiny_config(CLA_SPEC, tmp_path, cla_data, epochs=1)
    partial = train(CLA_SPEC, dataclasses.replace(cfg, folds="1"))
    assert partial["folds_done"] == [1] and partial["folds_missing"] == [0] and partial["n_oof"] == 12
    full = train(CLA_SPEC, dataclasses.replace(cfg, folds="0"))
    assert full["folds_done"] == [0, 1] and full["n_oof"] == 24


def test_identical_runs_give_identical_oof(tmp_path, cla_data):
    a = train(CLA_SPEC, tiny_config(CLA_SPEC, tmp_path / "a", cla_data, epochs=1, folds="0"))
    b = train(CLA_SPEC, tiny_config(CLA_SPEC, tmp_path / "b", cla_data, epochs=1, folds="0"))
    oof_a = pd.read_csv(tmp_path / "a/run/oof.csv").filter(like="p_").to_numpy()
    oof_b = pd.read_csv(tmp_path / "b/run/oof.csv").filter(like="p_").to_numpy()
    np.testing.assert_array_equal(oof_a, oof_b)
    assert a["oof_default_rule"] == b["oof_default_rule"]


def test_a_changed_recipe_cannot_reuse_the_run_folder(tmp_path, cla_data):
    train(CLA_SPEC, tiny_config(CLA_SPEC, tmp_path, cla_data, epochs=1, folds="0"))
    with pytest.raises(ValueError, match=r"different recipe \(lr differ\)"):
        train(CLA_SPEC, tiny_config(CLA_SPEC, tmp_path, cla_data, epochs=1, folds="0", lr=0.5))


def test_folds_file_is_stable_and_notices_changed_data(tmp_path):
    data = make_cla_data(tmp_path / "d", per_class=5)
    samples = read_cla(data)
    first = load_or_make_folds(CLA, samples, "d", 5, seed=1, folds_dir=tmp_path / "folds")
    again = load_or_make_folds(CLA, samples, "d", 5, seed=999, folds_dir=tmp_path / "folds")
    np.testing.assert_array_equal(first, again)                     # read back, not re-split
    for label in range(6):                                          # stratified: each class once per fold
        assert sorted(first[[s.labels[0] == label for s in samples]]) == [0, 1, 2, 3, 4]
    save_image(samples[3].path, np.zeros((40, 40, 3), np.uint8))
    with pytest.raises(FoldsMismatchError, match=r"no longer matches its folds file; changed: 1 \(.*img003"):
        load_or_make_folds(CLA, read_cla(data), "d", 5, seed=1, folds_dir=tmp_path / "folds")


def test_unreadable_training_image_stops_before_training_and_before_folds(tmp_path):
    data = make_cla_data(tmp_path / "d", per_class=2)
    bad = next((data / "乳腺分类训练数据集/train/3类/images").iterdir())
    bad.write_bytes(b"broken")
    with pytest.raises(DatasetError, match=rf"1 training image\(s\) cannot be read.*\n  {bad}: cannot decode"):
        train(CLA_SPEC, tiny_config(CLA_SPEC, tmp_path, data))
    assert not (tmp_path / "folds").exists() and not list((tmp_path / "run").glob("fold*"))


def test_cli_reports_bad_data_and_bad_keys(tmp_path, capsys):
    assert cli_main(CLA_SPEC, ["--data", str(tmp_path)]) == 2
    assert "no cla training data here" in capsys.readouterr().err
    assert cli_main(CLA_SPEC, ["--data", str(tmp_path), "--set", "learning_rate=1"]) == 2
    assert "unknown config key 'learning_rate'" in capsys.readouterr().err
    assert cli_main(FEA_SPEC, ["--show-config", "--epochs", "3", "--set", "feature_weights=1,2,1,1"]) == 0
    out = capsys.readouterr().out
    assert "epochs: 3" in out and "soft_f1_weight: 0.1" in out and "- 2.0" in out


def test_fea_run_masks_unknowns_tunes_thresholds_and_exports_for_run_py(tmp_path, fea_data, weights):
    metrics = train(FEA_SPEC, tiny_config(FEA_SPEC, tmp_path, fea_data))
    assert metrics["n_oof"] == 16 and set(metrics["rule"]) == {"thresholds"}
    calcification = metrics["oof_default_rule"]["features"]["calcification"]
    assert calcification["n"] == 14                                  # two unknown labels left out
    assert (tmp_path / f"folds/{fea_data.name}/fea_folds.csv").is_file()
    assert "calcification 2" in (tmp_path / "run/train.log").read_text()  # unknowns counted in the log
    assert cli_main(FEA_SPEC, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "w/fea")]) == 0
    manifest = json.loads((tmp_path / "w/fea/manifest.json").read_text())
    assert manifest["decision"] == metrics["rule"] and len(manifest["prior"]) == 4
    shutil.copytree(weights / "cla", tmp_path / "w/cla")
    test_dir = make_test_folder(tmp_path / "testB", n=3)
    assert run.main(["--weights", str(tmp_path / "w"), "--test-dir", str(test_dir), "--out-dir",
                     str(tmp_path / "out"), "--quiet", "--workers", "0"]) == 0
    assert len(pd.read_csv(tmp_path / "out/fea_pre.csv")) == 3


def test_unknown_labels_are_masked_not_zero():
    samples = read_fea_like([(1, -1, 0, 1), (0, 1, -1, 0)])
    targets, masks = encode_targets(FEA, samples)
    np.testing.assert_array_equal(masks, [[1, 0, 1, 1], [1, 1, 0, 1]])
    loss = MaskedMultiTaskLoss(0.0, np.ones(4), 0.0)
    logits = torch.tensor([[5.0, 9.0, -5.0, 5.0], [-5.0, 5.0, 9.0, -5.0]])  # confident 1 where unknown
    masked = loss(logits, torch.tensor(targets), torch.tensor(masks))
    as_zero = loss(logits, torch.tensor(targets), torch.ones(2, 4))
    assert masked.item() < 0.01 < 1.0 < as_zero.item()


def read_fea_like(rows):
    from model.data import Sample
    return [Sample(path=None, key=str(i), labels=row, boxes=()) for i, row in enumerate(rows)]


def test_tuned_thresholds_beat_half_on_a_constructed_case():
    # An under-confident model: positives score 0.3-0.45, negatives 0.05-0.35.
    rng = np.random.default_rng(0)
    labels = (rng.random(400) < 0.2).astype(int)
    probs = np.where(labels == 1, rng.uniform(0.3, 0.45, 400), rng.uniform(0.05, 0.35, 400))
    (t,) = tune_thresholds(probs[:, None], labels[:, None])
    assert 0.28 <= t <= 0.36
    assert feature_score(labels, probs >= t)["score"] > feature_score(labels, probs >= 0.5)["score"] + 0.1


def test_tuned_offsets_beat_argmax_on_a_constructed_case():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 6, 600)
    logits = rng.normal(0, 1, (600, 6))
    logits[np.arange(600), labels] += 1.5
    logits[:, 5] -= 2.0                       # the model under-predicts class 5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    offsets = tune_logit_offsets(probs, labels)
    tuned = CLA.decide(probs, {"logit_offsets": offsets})
    assert offsets[5] > 1.0
    assert cla_score(labels, tuned)["score"] > cla_score(labels, probs.argmax(1))["score"] + 0.05


def test_box_cutmix_mixes_labels_by_lesion_area():
    target = np.full((100, 100, 3), 50, np.uint8)
    donor_img = np.full((100, 100, 3), 200, np.uint8)
    donor = CachedImage(donor_img, donor_img[:32, :32], np.array([[0.4, 0.4, 0.6, 0.6]], np.float32))
    boxes = np.array([[0.0, 0.0, 0.2, 0.2]], np.float32)              # target lesion: area 0.04
    out, weight = box_cutmix(target, boxes, donor, np.random.default_rng(0), margin=0.0)
    pasted = np.argwhere(out[..., 0] == 200)
    assert len(pasted) == 400                                          # the 20x20 donor lesion
    (y0, x0), (y1, x1) = pasted.min(0) / 100, (pasted.max(0) + 1) / 100
    overlap = max(0, min(0.2, x1) - x0) * max(0, min(0.2, y1) - y0)
    assert weight == pytest.approx(0.04 / (0.04 + 0.04 - overlap))
    assert box_cutmix(target, np.zeros((0, 4)), donor, np.random.default_rng(0)) is None


def test_training_never_asks_the_network_for_albumentations_updates():
    import os
    import subprocess
    import sys
    code = ("import socket\n"
            "def refuse(*a, **k): raise AssertionError('network used')\n"
            "socket.socket.connect = refuse\n"
            "import model.training.dataset\n")
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                            cwd=os.path.dirname(os.path.dirname(__file__)))
    assert result.returncode == 0 and "network used" not in result.stderr, result.stderr


def test_uncertainty_weighting_learns_one_weight_per_feature(tmp_path, fea_data):
    cfg = tiny_config(FEA_SPEC, tmp_path, fea_data, folds="0", epochs=2, lr=0.05, task_weighting="uncertainty")
    train(FEA_SPEC, cfg)
    done = json.loads((tmp_path / "run/fold0/done.json").read_text())
    assert len(done["log_vars"]) == 4 and any(abs(v) > 1e-3 for v in done["log_vars"])
    loss = MaskedMultiTaskLoss(0.0, np.ones(4), 0.0, learned=True)
    with torch.no_grad():
        loss.log_vars.copy_(torch.tensor([0.0, 2.0, 0.0, 0.0]))
    logits, targets = torch.zeros(2, 4), torch.ones(2, 4)
    plain = MaskedMultiTaskLoss(0.0, np.ones(4), 0.0)(logits, targets, torch.ones(2, 4))
    # feature 2's term shrinks by exp(-2) and pays 2/2 for it
    expected = (3 * np.log(2) + np.exp(-2) * np.log(2) + 1.0) / 4
    assert loss(logits, targets, torch.ones(2, 4)).item() == pytest.approx(expected, rel=1e-5)
    assert plain.item() == pytest.approx(np.log(2), rel=1e-5)
