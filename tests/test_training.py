import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import run
from model.metric import UNKNOWN
from model.readers import DatasetError
from model.training.cli import main as cli_main
from model.training.config import build_config
from model.training.dataset import CachedImage, box_cutmix
from model.training.experiment import train
from model.training.export_run import export
from model.training.losses import MaskedMultiLabelLoss, auto_label_weights
from tests.helpers import (CLA_TASK, FEA_TASK, TEST_BACKBONE, TEST_SIZE, make_bundle, make_cla_data, make_fea_data,
                           make_test_folder)

TINY = dict(backbone=TEST_BACKBONE, pretrained="none", img_size=TEST_SIZE, epochs=2, batch_size=8,
            n_folds=2, workers=0, patience=5, checkpoint_every=0)


def tiny_config(task, tmp_path, data, **extra):
    return build_config(task, overrides={"data": str(data), "out": str(tmp_path / "run"),
                                         "folds_dir": str(tmp_path / "folds"), **{**TINY, **extra}})


@pytest.fixture(scope="module")
def cla_data(tmp_path_factory):
    return make_cla_data(tmp_path_factory.mktemp("cla"), per_class=4)


@pytest.fixture(scope="module")
def fea_data(tmp_path_factory):
    return make_fea_data(tmp_path_factory.mktemp("fea"), n=16, unknown={"calcification": [1, 2]})


def run_py(weights, test_dir, out_dir, *extra):
    return run.main(["--weights", str(weights), "--test-dir", str(test_dir), "--out-dir", str(out_dir),
                     "--quiet", "--workers", "0", *extra])


def test_two_fold_cla_run_gives_complete_oof_metrics_and_a_bundle_run_py_uses(tmp_path, cla_data):
    metrics = train(CLA_TASK, tiny_config(CLA_TASK, tmp_path, cla_data))
    run_dir = tmp_path / "run"
    assert metrics["folds_done"] == [0, 1] and metrics["folds_missing"] == [] and metrics["n_oof"] == 24
    oof = pd.read_csv(run_dir / "oof.csv")
    assert len(oof) == 24 and not oof.filter(like="p_").isna().any().any()
    saved = json.loads((run_dir / "metrics.json").read_text())
    for key in ("score", "accuracy", "macro_f1", "balanced_accuracy", "auc", "per_class_f1", "confusion"):
        assert key in saved["oof_tuned_rule"], key
    assert saved["rule_report"]["adopted"] is False and "only 24 out-of-fold images" in saved["rule_report"]["why"]
    for name in ("task.yaml", "config.yaml", "train.log", "confusion.png", "fold0/curves.png", "fold1/best.pt"):
        assert (run_dir / name).stat().st_size > 0, name
    assert (tmp_path / f"folds/{cla_data.name}/cla_folds.csv").is_file()
    history = json.loads((run_dir / "fold0/history.json").read_text())
    done = json.loads((run_dir / "fold0/done.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2] and done["selected_epoch"] == 2  # counted from 1; the last one

    export(run_dir, tmp_path / "weights/cla")
    manifest = json.loads((tmp_path / "weights/cla/manifest.json").read_text())
    assert manifest["decision"] == saved["rule"] and len(manifest["folds"]) == 2
    assert manifest["prior"] == pytest.approx([1 / 6] * 6)
    assert manifest["cv"]["n_oof"] == 24 and manifest["cv"]["folds_in_bundle"] == [0, 1]
    assert "data" not in manifest["recipe"] and "out" not in manifest["recipe"] and "folds" not in manifest["recipe"]
    assert str(tmp_path) not in json.dumps(manifest)                 # no machine paths in a bundle
    assert cli_main(["export", str(run_dir), "--out", str(tmp_path / "one"), "--folds", "1"]) == 0
    assert [f["fold"] for f in json.loads((tmp_path / "one/manifest.json").read_text())["folds"]] == [1]
    make_bundle(tmp_path / "weights/fea", "fea")
    test_dir = make_test_folder(tmp_path / "testB", n=4)
    assert run_py(tmp_path / "weights", test_dir, tmp_path / "out") == 0
    assert len(pd.read_csv(tmp_path / "out/cla_pre.csv")) == 4


def test_interrupted_run_resumes_at_the_last_finished_epoch(tmp_path, cla_data):
    cfg = tiny_config(CLA_TASK, tmp_path, cla_data, epochs=3)

    def stop_after_first_epoch(fold, epoch, score):
        if fold == 1 and epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(CLA_TASK, cfg, report=stop_after_first_epoch)
    run_dir = tmp_path / "run"
    assert (run_dir / "fold0/done.json").is_file() and (run_dir / "fold1/last.pt").is_file()
    assert (run_dir / "FAILED").read_text().startswith("interrupted")
    done_before = (run_dir / "fold0/done.json").stat().st_mtime_ns
    first_epoch = json.loads((run_dir / "fold1/history.json").read_text())[0]
    seen = []
    train(CLA_TASK, tiny_config(CLA_TASK, tmp_path, cla_data, epochs=3), report=lambda f, e, s: seen.append((f, e)))
    assert seen == [(1, 2), (1, 3)]                                  # fold 0 skipped, fold 1 from epoch 2
    assert (run_dir / "fold0/done.json").stat().st_mtime_ns == done_before
    assert not (run_dir / "FAILED").exists() and "fold 0: already finished" in (run_dir / "train.log").read_text()
    history = json.loads((run_dir / "fold1/history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3] and history[0] == first_epoch
    assert not (run_dir / "fold1/last.pt").exists()
    # The resumed run follows the same trajectory as one that was never interrupted.
    train(CLA_TASK, tiny_config(CLA_TASK, tmp_path, cla_data, epochs=3, out=str(tmp_path / "straight")))
    straight = json.loads((tmp_path / "straight/fold1/history.json").read_text())
    assert [(h["train_loss"], h["val_score"]) for h in history] == [(h["train_loss"], h["val_score"]) for h in straight]


def test_the_resume_state_is_saved_at_most_once_per_interval(tmp_path, cla_data, monkeypatch):
    import model.training.engine as engine
    saves = []
    real = engine.torch.save
    monkeypatch.setattr(engine.torch, "save", lambda obj, path: (saves.append(path) if ".last.pt" in str(path) else None,
                                                                  real(obj, path)))
    train(CLA_TASK, tiny_config(CLA_TASK, tmp_path, cla_data, epochs=4, folds="0", checkpoint_every=3600))
    assert saves == []                                                # a 4-epoch fold well inside an hour
    train(CLA_TASK, tiny_config(CLA_TASK, tmp_path / "each", cla_data, epochs=4, folds="0"))
    assert len(saves) == 3                                            # every epoch but the last one


def test_resume_state_loads_without_pickle(tmp_path, cla_data):
    """last.pt holds plain tensors and numbers: it loads with weights_only=True, so a planted pickle cannot run."""
    with pytest.raises(KeyboardInterrupt):
        train(CLA_TASK, tiny_config(CLA_TASK, tmp_path, cla_data, folds="0"),
              report=lambda f, e, s: (_ for _ in ()).throw(KeyboardInterrupt))
    state = torch.load(tmp_path / "run/fold0/last.pt", weights_only=True)
    assert state["state"]["epoch"] == 1

    class Payload:
        def __reduce__(self):
            return (shutil.rmtree, (str(tmp_path / "victim"),))
    (tmp_path / "victim").mkdir()
    torch.save({"model": Payload()}, tmp_path / "run/fold0/last.pt")
    with pytest.raises(Exception, match="Weights only load failed|Unsupported global"):
        train(CLA_TASK, tiny_config(CLA_TASK, tmp_path, cla_data, folds="0"))
    assert (tmp_path / "victim").is_dir()


def test_early_stopping_stops_a_fold_that_stopped_improving(tmp_path, cla_data):
    cfg = tiny_config(CLA_TASK, tmp_path, cla_data, epochs=6, patience=1, lr=0.0, folds="0", ema_decay=0.0,
                      select_epoch="best")
    train(CLA_TASK, cfg)                                             # lr 0: the score never improves after epoch 1
    done = json.loads((tmp_path / "run/fold0/done.json").read_text())
    assert done["selected_epoch"] == 1 and done["epochs_run"] == 2
    train(CLA_TASK, tiny_config(CLA_TASK, tmp_path / "last", cla_data, epochs=4, patience=1, lr=0.0, folds="0",
                                ema_decay=0.0))                      # select_epoch last: no early stop
    done = json.loads((tmp_path / "last/run/fold0/done.json").read_text())
    assert done["selected_epoch"] == 4 and done["epochs_run"] == 4


def test_folds_trained_separately_gather_into_one_run(tmp_path, cla_data):
    partial = train(CLA_TASK, tiny_config(CLA_TASK, tmp_path, cla_data, epochs=1, folds="1"))
    assert partial["folds_done"] == [1] and partial["folds_missing"] == [0] and partial["n_oof"] == 12
    full = train(CLA_TASK, tiny_config(CLA_TASK, tmp_path, cla_data, epochs=1, folds="0"))
    assert full["folds_done"] == [0, 1] and full["n_oof"] == 24


def test_identical_runs_give_identical_oof(tmp_path, cla_data):
    a = train(CLA_TASK, tiny_config(CLA_TASK, tmp_path / "a", cla_data, epochs=1, folds="0"))
    b = train(CLA_TASK, tiny_config(CLA_TASK, tmp_path / "b", cla_data, epochs=1, folds="0"))
    oof_a = pd.read_csv(tmp_path / "a/run/oof.csv").filter(like="p_").to_numpy()
    oof_b = pd.read_csv(tmp_path / "b/run/oof.csv").filter(like="p_").to_numpy()
    np.testing.assert_array_equal(oof_a, oof_b)
    assert a["oof_default_rule"] == b["oof_default_rule"]


def test_a_changed_recipe_cannot_reuse_the_run_folder(tmp_path, cla_data):
    train(CLA_TASK, tiny_config(CLA_TASK, tmp_path, cla_data, epochs=1, folds="0"))
    with pytest.raises(ValueError, match=r"different recipe \(lr differ\)"):
        train(CLA_TASK, tiny_config(CLA_TASK, tmp_path, cla_data, epochs=1, folds="0", lr=0.5))


def test_every_data_problem_is_reported_before_anything_is_made(tmp_path):
    data = make_cla_data(tmp_path / "d", per_class=2)
    train_dir = data / "乳腺分类训练数据集/train"
    broken = next((train_dir / "3类/images").iterdir())
    broken.write_bytes(b"broken")
    (train_dir / "4A类/labels/img004.txt").write_text("9 0.5 0.5 0.1 0.1\n")
    (train_dir / "4A类/images/img004.jpg").write_bytes(b"also broken")  # bad label and bad image
    (train_dir / "7类").mkdir()
    with pytest.raises(DatasetError) as info:
        train(CLA_TASK, tiny_config(CLA_TASK, tmp_path, data))
    message = str(info.value)
    assert "4 problem(s)" in message, message
    assert f"{broken}: cannot decode" in message and "img004.jpg: cannot decode" in message
    assert "img004.txt:1: class id 9" in message and "7类: folder is not one of the class folders" in message
    assert not (tmp_path / "folds").exists() and not (tmp_path / "run").exists()


def test_a_run_that_fails_before_training_leaves_no_folder(tmp_path, cla_data, monkeypatch):
    import model.training.experiment as experiment

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")
    monkeypatch.setattr(experiment, "train_fold", broken)
    with pytest.raises(RuntimeError):
        train(CLA_TASK, tiny_config(CLA_TASK, tmp_path, cla_data))
    assert not (tmp_path / "run").exists()


def test_cli_reports_bad_data_bad_keys_and_bad_devices(tmp_path, capsys, cla_data):
    task = ["--task", "tasks/birads-cla.yaml"]
    assert cli_main([*task, "--data", str(tmp_path)]) == 2
    assert "no cla training data here" in capsys.readouterr().err
    assert cli_main([*task, "--data", str(tmp_path), "--set", "learning_rate=1"]) == 2
    assert "unknown config key 'learning_rate'" in capsys.readouterr().err
    assert cli_main([*task, "--set", "lr=abc", "--show-config"]) == 2
    assert "lr='abc': expected float" in capsys.readouterr().err
    assert cli_main([*task, "--set", "gray_p=1.5", "--show-config"]) == 2
    assert "gray_p=1.5: a probability, from 0 to 1" in capsys.readouterr().err
    assert cli_main([*task, "--set", "imbalanc=none", "--show-config"]) == 2
    assert "did you mean 'imbalance'?" in capsys.readouterr().err
    assert cli_main([*task, "--set", "label_weights=1,1,1,1", "--show-config"]) == 2
    assert "'label_weights' is for multi-label tasks; this task is single-label" in capsys.readouterr().err
    assert cli_main([*task, "--set", "feature_weights=1,1,1,1", "--show-config"]) == 2
    assert "is now called 'label_weights'" in capsys.readouterr().err
    assert cli_main([*task, "--data", str(cla_data), "--device", "cuda:7", "--out", str(tmp_path / "r")]) == 2
    assert "device cuda:7 asked for" in capsys.readouterr().err and not (tmp_path / "r").exists()
    assert cli_main(["--task", "tasks/birads-fea.yaml", "--show-config", "--epochs", "3",
                     "--set", "label_weights=1,2,1,1"]) == 0
    out = capsys.readouterr().out
    assert "epochs: 3" in out and "soft_f1_weight: 0.1" in out and "label_weights: [1.0, 2.0, 1.0, 1.0]" in out
    assert "imbalance" not in out and "# loss weight per label" in out
    listed = yaml.safe_load(out)  # each line is "key: value": the listing reads back as a config file
    assert listed["epochs"] == 3 and listed["label_weights"] == [1.0, 2.0, 1.0, 1.0] and "{" not in out


def test_export_explains_what_is_wrong(tmp_path, capsys, fea_data):
    assert cli_main(["export", str(tmp_path)]) == 2
    assert "not a run folder (no task.yaml and samples.csv)" in capsys.readouterr().err
    train(FEA_TASK, tiny_config(FEA_TASK, tmp_path, fea_data, epochs=1, folds="0"))
    from model.training.cli import main
    assert main(["export", str(tmp_path / "run")], default_task=CLA_TASK.source) == 2
    assert "is a run of task 'fea', not 'cla'" in capsys.readouterr().err
    assert cli_main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "w")]) == 0
    assert cli_main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "w")]) == 2
    assert "already holds a bundle; pass --force" in capsys.readouterr().err


def test_fea_run_masks_unknowns_tunes_thresholds_and_exports_for_run_py(tmp_path, fea_data, weights):
    metrics = train(FEA_TASK, tiny_config(FEA_TASK, tmp_path, fea_data))
    assert metrics["n_oof"] == 16 and set(metrics["rule"]) == {"thresholds"}
    calcification = metrics["oof_default_rule"]["labels"]["calcification"]
    assert calcification["n"] == 14                                  # two unknown labels left out
    assert metrics["oof_default_rule"]["per_label"]["calcification"]["known"] == 14
    assert (tmp_path / f"folds/{fea_data.name}/fea_folds.csv").is_file()
    assert "calcification 2" in (tmp_path / "run/train.log").read_text()  # unknowns counted in the log
    assert cli_main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "w/fea")]) == 0
    manifest = json.loads((tmp_path / "w/fea/manifest.json").read_text())
    assert manifest["decision"] == metrics["rule"] and len(manifest["prior"]) == 4
    shutil.copytree(weights / "cla", tmp_path / "w/cla")
    test_dir = make_test_folder(tmp_path / "testB", n=3)
    assert run_py(tmp_path / "w", test_dir, tmp_path / "out") == 0
    assert len(pd.read_csv(tmp_path / "out/fea_pre.csv")) == 3


def test_unknown_labels_are_masked_not_zero():
    labels = np.array([(1, -1, 0, 1), (0, 1, -1, 0)])
    targets, masks = FEA_TASK.kind.encode(labels, 4)
    np.testing.assert_array_equal(masks, [[1, 0, 1, 1], [1, 1, 0, 1]])
    loss = MaskedMultiLabelLoss(0.0, np.ones(4), 0.0)
    logits = torch.tensor([[5.0, 9.0, -5.0, 5.0], [-5.0, 5.0, 9.0, -5.0]])  # confident 1 where unknown
    masked = loss(logits, torch.tensor(targets), torch.tensor(masks))
    as_zero = loss(logits, torch.tensor(targets), torch.ones(2, 4))
    assert masked.item() < 0.01 < 1.0 < as_zero.item()


def test_automatic_label_weights_favour_rare_labels():
    targets = np.array([[1, 1], [0, 1], [0, 0], [0, 1], [0, 0], [0, 0], [0, 1], [0, 0], [0, 0], [0, 0]], np.float32)
    masks = np.ones_like(targets)
    masks[0, 1] = 0                                                   # an unknown label does not count
    expected = np.array([1 / np.sqrt(0.1 * 0.9), 1 / np.sqrt(3 / 9 * 6 / 9)])
    assert auto_label_weights(targets, masks) == pytest.approx(expected / expected.mean())
    from tests.helpers import generic_task
    task = generic_task(kind="multi-label", heads=("rare", "common"))
    loss = task.kind.make_loss(build_config(task), targets, masks)   # the default recipe: label_weights auto
    assert loss.weights.tolist() == pytest.approx((expected / expected.mean()).tolist())
    assert loss.weights[0] > loss.weights[1] and UNKNOWN == -1


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


def test_uncertainty_weighting_learns_one_weight_per_label(tmp_path, fea_data):
    cfg = tiny_config(FEA_TASK, tmp_path, fea_data, folds="0", epochs=2, lr=0.05, task_weighting="uncertainty")
    train(FEA_TASK, cfg)
    done = json.loads((tmp_path / "run/fold0/done.json").read_text())
    assert len(done["log_vars"]) == 4 and any(abs(v) > 1e-3 for v in done["log_vars"])
    loss = MaskedMultiLabelLoss(0.0, np.ones(4), 0.0, learned=True)
    with torch.no_grad():
        loss.log_vars.copy_(torch.tensor([0.0, 2.0, 0.0, 0.0]))
    logits, targets = torch.zeros(2, 4), torch.ones(2, 4)
    plain = MaskedMultiLabelLoss(0.0, np.ones(4), 0.0)(logits, targets, torch.ones(2, 4))
    # label 2's term shrinks by exp(-2) and pays 2/2 for it
    expected = (3 * np.log(2) + np.exp(-2) * np.log(2) + 1.0) / 4
    assert loss(logits, targets, torch.ones(2, 4)).item() == pytest.approx(expected, rel=1e-5)
    assert plain.item() == pytest.approx(np.log(2), rel=1e-5)
