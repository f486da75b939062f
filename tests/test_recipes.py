"""The linear probe, LP-FT, layer-wise LR decay and the error gallery."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import run
from model.bundle import load_bundle
from model.kinds import MULTI_LABEL, SINGLE_LABEL
from model.network import create_network
from model.training.config import build_config
from model.training.engine import param_groups
from model.training.experiment import train
from model.training.export_run import export
from model.training.gallery import grad_cam, pick_mistakes
from model.training.probe import features_for, fit_head, head_probs
from tests.helpers import (CLA_TASK, FEA_TASK, TEST_BACKBONE, TEST_SIZE, make_bundle, make_cla_data, make_fea_data,
                           make_test_folder)

TINY = dict(backbone=TEST_BACKBONE, pretrained="none", img_size=TEST_SIZE, epochs=1, batch_size=8, n_folds=2,
            workers=0)


def config(task, tmp_path, data, name="run", **extra):
    return build_config(task, overrides={"data": str(data), "out": str(tmp_path / name),
                                         "folds_dir": str(tmp_path / "folds"), **TINY, **extra})


@pytest.fixture(scope="module")
def cla_data(tmp_path_factory):
    return make_cla_data(tmp_path_factory.mktemp("cla"), per_class=4)


def test_the_probe_recipe_trains_exports_and_serves_like_any_bundle(tmp_path, cla_data):
    metrics = train(CLA_TASK, config(CLA_TASK, tmp_path, cla_data, recipe="probe"))
    assert metrics["folds_done"] == [0, 1] and metrics["gain_over_probe"] == pytest.approx(0.0)
    assert not list((tmp_path / "run").glob("fold*/last.pt"))     # nothing was trained by gradient
    folder = export(tmp_path / "run", tmp_path / "w/cla")
    make_bundle(tmp_path / "w/fea", "fea")
    test_dir = make_test_folder(tmp_path / "testB", n=3)
    assert run.main(["--weights", str(tmp_path / "w"), "--test-dir", str(test_dir), "--out-dir", str(tmp_path / "out"),
                     "--quiet", "--workers", "0", "--device", "cpu"]) == 0
    assert len(pd.read_csv(tmp_path / "out/cla_pre.csv")) == 3
    # The saved network is the regression, standardisation folded in: on the same views it gives the
    # probe's out-of-fold probabilities.
    from model.checkpoint import load_checkpoint, network_from_checkpoint
    from model.network import InputNorm
    ckpt = load_checkpoint(tmp_path / "run/fold0/best.pt")
    net = network_from_checkpoint(ckpt)
    images, _ = _items_and_hashes(cla_data)
    val = pd.read_csv(tmp_path / "run/samples.csv")["fold"].to_numpy() == 0
    x = InputNorm(ckpt["mean"], ckpt["std"])(torch.from_numpy(images[val]).permute(0, 3, 1, 2))
    with torch.no_grad():
        probs = (net(x).softmax(1) + net(x.flip(3)).softmax(1)).numpy() / 2
    np.testing.assert_allclose(probs, np.load(tmp_path / "run/fold0/oof.npy"), atol=1e-4)
    assert load_bundle(folder).manifest["recipe"]["recipe"] == "probe"


def test_every_run_reports_the_probe_beside_its_own_score(tmp_path, cla_data, capsys):
    from model.training.cli import main
    assert main(["--task", str(CLA_TASK.source), "--data", str(cla_data), "--out", str(tmp_path / "run"),
                 *[f"--set={k}={v}" for k, v in {**TINY, "folds_dir": tmp_path / "folds"}.items()]]) == 0
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    assert {"oof_default_rule", "oof_tuned_rule", "per_fold"} <= set(metrics["probe"])
    assert metrics["gain_over_probe"] == pytest.approx(metrics["oof_tuned_rule"]["score"] - metrics["probe"]["oof_tuned_rule"])
    assert "linear probe on the same folds" in capsys.readouterr().out


def test_lp_ft_starts_every_fold_from_its_probe(tmp_path, cla_data, monkeypatch):
    import model.training.engine as engine
    started = {}
    real = engine.create_network

    def spy(*args, **kwargs):
        net = real(*args, **kwargs)
        started.setdefault("net", net)
        return net
    monkeypatch.setattr(engine, "create_network", spy)

    def stop(fold, epoch, score):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train(CLA_TASK, config(CLA_TASK, tmp_path, cla_data, head_init="probe", lr=0.0, ema_decay=0.0), report=stop)
    head = started["net"].get_classifier()
    assert head.weight.abs().max() > 0.05                            # not the small random start (std 0.01)
    from model.training.probe import probe_folds
    features = features_for(config(CLA_TASK, tmp_path, cla_data), 6, *_items_and_hashes(cla_data), torch.device("cpu"))
    samples = pd.read_csv(tmp_path / "run/samples.csv")
    targets = np.eye(6, dtype=np.float32)[samples["label"]]
    W, b = probe_folds(CLA_TASK, config(CLA_TASK, tmp_path, cla_data), features, targets, np.ones_like(targets),
                       samples["fold"].to_numpy())[0]
    assert torch.allclose(head.weight, torch.tensor(W, dtype=torch.float32), atol=1e-5)


def _items_and_hashes(data):
    from model.readers import read_dataset
    from model.training.dataset import build_cache
    from model.training.folds import content_hash
    _, result = read_dataset(CLA_TASK, data)
    cache, _ = build_cache(result.samples, TEST_SIZE, 1.15)
    return cache.eval, [content_hash(s.path) for s in result.samples]


def test_the_probe_head_equals_a_regression_on_standardised_features():
    rng = np.random.default_rng(0)
    features = rng.normal(3, 2, (60, 2, 8))
    labels = (features[:, 0, 0] > 3).astype(int) + (features[:, 0, 1] > 4)
    targets = np.eye(3, dtype=np.float32)[labels]
    W, b = fit_head(SINGLE_LABEL, features, targets, np.ones_like(targets), c=1.0)
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    X = features.reshape(120, 8)
    scaler = StandardScaler().fit(X)
    reference = LogisticRegression(C=1.0, max_iter=2000).fit(scaler.transform(X), np.repeat(labels, 2))
    ours = head_probs(CLA_TASK.kind.__class__(), W, b, features[:, :1])
    assert np.allclose(ours, reference.predict_proba(scaler.transform(features[:, 0])), atol=1e-4)
    multi = fit_head(MULTI_LABEL, features, np.c_[labels == 1, labels == 2].astype(np.float32),
                     np.array([[1, 1]] * 59 + [[0, 1]], np.float32), c=0)   # one unknown label, C by inner CV
    assert multi[0].shape == (2, 8) and np.isfinite(multi[0]).all()


def test_probe_features_are_cached_and_verified(tmp_path, cla_data):
    cfg = config(CLA_TASK, tmp_path, cla_data)
    images, hashes = _items_and_hashes(cla_data)
    first = features_for(cfg, 6, images, hashes, torch.device("cpu"), cache=tmp_path / "cache")
    (cached,) = (tmp_path / "cache").glob("*.npz")
    data = dict(np.load(cached))
    data["features"] = data["features"] + 1                          # tampered: the digest no longer matches
    with open(cached, "wb") as f:
        np.savez(f, **data)
    again = features_for(cfg, 6, images, hashes, torch.device("cpu"), cache=tmp_path / "cache")
    np.testing.assert_array_equal(again, first)
    per_image = features_for(config(CLA_TASK, tmp_path, cla_data, input_norm="image"), 6, images, hashes,
                             torch.device("cpu"), cache=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2 and not np.allclose(per_image, first)


def test_layer_decay_and_backbone_lr_set_each_groups_rate():
    net = create_network("tf_efficientnet_lite0", 3)
    cfg = build_config(CLA_TASK, overrides={"lr": 1e-3, "layer_decay": 0.8, "backbone_lr": 0.5})
    groups = param_groups(net, cfg)
    head = {id(p) for p in net.get_classifier().parameters()}
    rates = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert all(rates[i] == pytest.approx(1e-3) for i in head)
    assert rates[id(net.conv_head.weight)] == pytest.approx(1e-3 * 0.8 * 0.5)
    assert rates[id(net.conv_stem.weight)] < rates[id(net.blocks[3][0].conv_pw.weight)] < rates[id(net.conv_head.weight)]
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))
    plain = param_groups(net, build_config(CLA_TASK, overrides={"lr": 1e-3}))
    assert {g["lr"] for g in plain} == {1e-3} and {g["weight_decay"] for g in plain} == {0.0, 0.01}


def test_the_gallery_picks_the_most_confident_mistakes_per_class_and_label():
    labels = np.array([0, 0, 0, 1, 1, 2])[:, None]
    probs = np.array([[.9, .05, .05], [.2, .7, .1], [.1, .3, .6], [.1, .8, .1], [.6, .4, 0], [0, 0, 1]])
    rows = pick_mistakes(CLA_TASK.__class__(**{**CLA_TASK.__dict__, "heads": ("a", "b", "c")}), labels, probs,
                         probs.argmax(1))
    assert [r[0] for r in rows] == ["true a", "true b", "true c"]
    assert [i for i, _, _ in rows[0][1]] == [1, 2] and rows[0][1][0][2] == "as b 0.70"
    assert [i for i, _, _ in rows[1][1]] == [4] and rows[2][1] == []
    fea_labels = np.array([[0, 1], [0, 1], [1, -1], [1, 0]])
    fea_probs = np.array([[.9, .2], [.6, .9], [.1, .9], [.4, .1]])
    rows = pick_mistakes(FEA_TASK.__class__(**{**FEA_TASK.__dict__, "heads": ("x", "y")}), fea_labels, fea_probs,
                         (fea_probs >= .5).astype(int))
    assert [(i, c[:7]) for i, _, c in rows[0][1]] == [(0, "false +"), (2, "false -"), (1, "false +"), (3, "false -")]
    assert [i for i, _, _ in rows[1][1]] == [0]                      # the unknown label is no mistake


def test_grad_cam_is_a_normalised_map_of_the_image_size():
    torch.manual_seed(0)
    net = create_network(TEST_BACKBONE, 3).eval()
    from model.network import InputNorm
    cam = grad_cam(net, InputNorm([0.5] * 3, [0.5] * 3), np.random.default_rng(0).integers(0, 255, (40, 48, 3), np.uint8), 1)
    assert cam.shape == (40, 48) and 0 <= cam.min() and cam.max() <= 1


def test_a_finished_run_draws_its_error_gallery(tmp_path):
    data = make_fea_data(tmp_path / "fea", n=12)
    train(FEA_TASK, config(FEA_TASK, tmp_path, data))
    image = Image.open(tmp_path / "run/errors.png")
    assert image.size[1] > 4 * 150                                   # a row per label
