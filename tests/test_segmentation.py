"""The segmentation kind: task files, masks and their scores, the decision rule, folds, TTA, bundles, run.py
and model.score, on tiny generated scans and random-init U-Nets."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

import run
from model import masks as M
from model.bundle import load_bundle
from model.checkpoint import CHECKPOINT_KEYS
from model.decision import tune_rule
from model.ensemble import make_tta, merge_views, tta_views
from model.errors import BundleError
from model.kinds import SEGMENTATION
from model.kinds.segmentation import MaskSet
from model.manifest import read_manifest
from model.predict import predict_paths
from model.score import ScoreError, score_folder
from model.task import TaskFileError, task_from_dict
from tests.helpers import SEG_SIZE, make_bundle, make_seg_bundle, make_seg_images, make_test_folder, seg_task


def test_a_segmentation_task_maps_each_class_to_its_mask_value():
    task = task_from_dict({"name": "ct", "kind": "segmentation", "classes": {"oedema": 1, "haemorrhage": 2},
                           "output": {"values": "rle", "rle_order": "row"}}, "<t>")
    assert task.heads == ("oedema", "haemorrhage") and task.mask_values == (1, 2)
    assert task.metric == "dice" and task.output.file == "ct_pre.csv" and task.output.rle_order == "row"
    assert task_from_dict(task.to_dict(), "<manifest>") == task.__class__(**{**task.__dict__, "source": "<manifest>"})
    assert seg_task().output.file == "blobs_masks"
    assert seg_task().output.id == "filename"      # masks are named after their images: no id to derive
    assert seg_task(values="rle").output.id == "number"


@pytest.mark.parametrize("change, message", [
    ({"classes": ["lesion"]}, r"classes: a segmentation task maps each class to its mask value"),
    ({"classes": {"a": 0}}, r"classes: a: 0 is not a mask value from 1 to 65535"),
    ({"classes": {"a": 1, "b": 1}}, r"two classes share one mask value"),
    ({"metric": "competition"}, r"a segmentation task is scored by dice, dice_per_image, iou"),
    ({"output": {"values": "labels"}}, r"a segmentation task writes masks or rle or summary"),
    ({"output": {"values": "masks", "file": "m.csv"}}, r"a plain folder name"),
    ({"output": {"values": "rle", "rle_order": "diagonal"}}, r"output.rle_order 'diagonal'"),
    ({"output": {"values": "masks", "rle_order": "row"}}, r"for values: rle only"),
])
def test_a_wrong_segmentation_task_is_refused_with_its_reason(change, message):
    raw = {"name": "x", "kind": "segmentation", "classes": {"lesion": 255}, **change}
    with pytest.raises(TaskFileError, match=message):
        task_from_dict(raw, "<t>")


def test_recipe_keys_of_another_kind_are_refused_and_sizes_must_divide_by_32():
    from model.training.config import build_config
    task = seg_task()
    assert build_config(task).architecture == "Unet"
    with pytest.raises(ValueError, match="config key 'cutmix_p' is for single-label and multi-label tasks"):
        build_config(task, overrides={"cutmix_p": 0.5})
    with pytest.raises(ValueError, match="img_size=100: .* a multiple of 32 \\(say 96\\)"):
        build_config(task, overrides={"img_size": 100})


def test_dice_iou_and_the_empty_mask_convention():
    truth = np.zeros((3, 4, 4), np.uint8)
    truth[0, :2, :2] = 1                        # image 0: 4 lesion pixels
    predicted = truth.copy()
    predicted[0, 0, 0] = 0                      # 3 of them found
    predicted[2, 3, 3] = 1                      # image 2 is empty but gets one pixel
    counts = M.pixel_counts(predicted, truth, 1)
    assert counts[0, 0].tolist() == [3, 0, 1, 12]
    per_image = M.image_dice(counts)
    assert per_image.tolist() == pytest.approx([6 / 7, 1.0, 0.0])      # empty truth + empty prediction = 1
    scores = M.segmentation_scores(counts, groups=np.array(["p1", "p1", "p2"]))
    assert scores["dice"] == pytest.approx((6 / 7 + 0.0) / 2)          # volumes pool their slices
    assert scores["dice_per_image"] == pytest.approx(np.mean([6 / 7, 1.0, 0.0]))
    assert scores["iou"] == pytest.approx(np.mean([3 / 4, 1.0, 0.0]))
    assert scores["sensitivity"] == pytest.approx(3 / 4)
    assert scores["specificity"] == pytest.approx(43 / 44)
    probs = predicted[:, None].astype(np.float32)
    details = SEGMENTATION.details(seg_task(), MaskSet(truth, ["p1", "p1", "p2"]), predicted, probs)
    assert details["per_volume_dice"] == pytest.approx({"p1": 6 / 7, "p2": 0.0})   # which patient fails


def test_a_mask_is_turned_upright_by_its_exif_orientation_as_its_image_is(tmp_path):
    from PIL import Image
    from model.images import load_rgb
    raw = np.zeros((4, 6), np.uint8)
    raw[0, 5] = 255                                                    # top right, before turning
    exif = Image.Exif()
    exif[0x0112] = 6                                                   # "rotate 90 clockwise to view"
    Image.fromarray(raw).save(tmp_path / "m.png", exif=exif)
    Image.fromarray(np.stack([raw] * 3, -1)).save(tmp_path / "i.png", exif=exif)
    mask = M.load_mask(tmp_path / "m.png", (255,))
    image = load_rgb(tmp_path / "i.png")
    assert mask.shape == (6, 4) == image.shape[:2]
    np.testing.assert_array_equal(mask * 255, image[..., 0])
    assert mask[5, 3] == 1
    # An upright mask drawn on the turned image (no EXIF of its own) fits it: no false size mismatch.
    from model.readers.base import ReadResult, segmentation_sample
    Image.fromarray(mask * 255).save(tmp_path / "upright.png")
    result = ReadResult([])
    assert segmentation_sample(seg_task(), tmp_path / "i.png", tmp_path / "upright.png", tmp_path, "p", result)
    assert not result.problems


def test_masks_written_for_exif_turned_images_pass_the_pre_flight_check(tmp_path):
    from PIL import Image
    from model.predict import list_test_images
    exif = Image.Exif()
    exif[0x0112] = 8                                                   # "rotate 90 counter-clockwise to view"
    scan = np.zeros((64, 96, 3), np.uint8)
    scan[10:30, 20:50] = 200
    (tmp_path / "test").mkdir()
    for name in ("0001.png", "0002.jpg"):
        Image.fromarray(scan).save(tmp_path / "test" / name, exif=exif)
    task = seg_task()
    make_seg_bundle(tmp_path / "w" / "blobs", task)
    assert run.main(["--weights", str(tmp_path / "w"), "--test-dir", str(tmp_path / "test"), "--out-dir",
                     str(tmp_path / "out"), "--quiet", "--workers", "0"]) == 0
    written = tmp_path / "out" / task.output.file
    assert Image.open(written / "0002.png").size == (64, 96)          # upright: 64 wide, 96 high
    images = list_test_images(tmp_path / "test", "filename").images
    assert SEGMENTATION.validate_output(written, task, images) == []


def test_the_rule_removes_small_components_and_picks_the_likeliest_class():
    probs = np.zeros((2, 20, 20), np.float32)
    probs[0, 2:10, 2:10] = 0.9                  # a 64-pixel lesion of class 1
    probs[1, 15, 15] = 0.8                      # a one-pixel speck of class 2
    mask = M.decide_mask(probs, threshold=0.5, min_area=0.0)
    assert (mask == 1).sum() == 64 and mask[15, 15] == 2
    mask = M.decide_mask(probs, threshold=0.5, min_area=2 / 400)
    assert (mask == 1).sum() == 64 and mask[15, 15] == 0
    assert M.decide_mask(probs, threshold=0.95, min_area=0.0).sum() == 0
    # Several classes (softmax, background dropped): lesion where the classes together outweigh the
    # threshold, then the likeliest class: background 0.2, class 1 0.45, class 2 0.35 is class 1.
    mixed = np.array([[[0.45]], [[0.35]]], np.float32)
    assert M.decide_mask(mixed, threshold=0.5, min_area=0.0)[0, 0] == 1
    assert M.decide_mask(mixed, threshold=0.85, min_area=0.0)[0, 0] == 0


def _truth(n=80, size=32, seed=0):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        if i % 2:
            y, x = rng.integers(4, size - 12, 2)
            masks[i, y:y + 8, x:x + 8] = 1
    return MaskSet(masks, [f"p{i // 4}" for i in range(n)])


def test_a_threshold_that_holds_up_out_of_fold_is_kept():
    truth = _truth()
    rng = np.random.default_rng(1)
    # An under-confident network: lesions at 0.4, background at 0.1, plus noise.
    probs = (truth.masks * 0.3 + 0.1 + rng.normal(0, 0.03, truth.masks.shape))[:, None].astype(np.float16)
    task = seg_task()
    rule, report = tune_rule(task, probs, truth)
    assert report["adopted"] and 0.15 <= rule["threshold"][0] <= 0.35, report
    assert report["held_out_score"] > report["neutral_score"] + 0.5


def test_a_rule_is_not_kept_when_the_neutral_one_is_as_good():
    truth = _truth()
    probs = truth.masks[:, None].astype(np.float16) * 0.98 + 0.01
    rule, report = tune_rule(seg_task(), probs, truth)
    assert not report["adopted"] and rule == SEGMENTATION.neutral_rule(1)


def test_folds_keep_each_patient_whole_and_spread_the_lesions():
    n = 60
    labels = np.array([[int(i % 3 == 0)] for i in range(n)])
    groups = np.array([f"p{i // 6}" for i in range(n)])
    fold = SEGMENTATION.split(labels, groups, 5, seed=0)
    for g in np.unique(groups):
        assert len(set(fold[groups == g])) == 1
    assert sorted(set(fold)) == [0, 1, 2, 3, 4]
    assert all(labels[fold == k].sum() > 0 for k in range(5))
    with pytest.raises(ValueError, match="3 groups cannot make 5 folds"):
        SEGMENTATION.split(labels[:18], groups[:18], 5, seed=0)


def test_a_flipped_view_is_flipped_back_before_the_views_are_averaged():
    images = torch.zeros(2, 3, 8, 8)
    images[:, :, :, :2] = 1.0                   # something on the left edge only
    tta = make_tta("hflip")
    identity = lambda x: x[:, :1]               # a "network" whose mask is its input  # noqa: E731
    merged = merge_views(SEGMENTATION, tta, identity(tta_views(images, tta)), len(images))
    torch.testing.assert_close(merged, identity(images))
    from model.kinds import SINGLE_LABEL
    scores = torch.tensor([[0.2, 0.8], [0.6, 0.4]])
    views = torch.cat([scores, scores.flip(1)])  # class probabilities never move with the image
    torch.testing.assert_close(merge_views(SINGLE_LABEL, tta, views, 2), (scores + scores.flip(1)) / 2)


def test_the_manifest_states_what_the_network_outputs(tmp_path):
    folder = make_seg_bundle(tmp_path / "blobs", seg_task())
    network = read_manifest(folder)["network"]
    assert network["architecture"] == "Unet" and network["crop_border"] is False
    assert network["outputs"]["type"] == "segmentation" and network["outputs"]["channels"] == 1
    assert network["outputs"]["spatial_shape"] == [SEG_SIZE, SEG_SIZE]
    assert load_bundle(folder).output_shape == (1, SEG_SIZE, SEG_SIZE)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["network"]["outputs"]["channels"] = 3
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="network.outputs .* does not describe what a segmentation task's network"):
        read_manifest(folder)


def test_bundle_checkpoints_carry_no_machine_path(tmp_path):
    from tests.helpers import PROJECT
    folders = [make_seg_bundle(tmp_path / "blobs", seg_task()), *sorted((PROJECT / "model" / "weights").iterdir())]
    for folder in folders:
        for path in folder.glob("*.pt"):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            assert set(ckpt) <= {"format", "state_dict", *CHECKPOINT_KEYS}, f"{path}: {sorted(ckpt)}"
            strings = list(_strings({k: v for k, v in ckpt.items() if k != "state_dict"}))
            assert not [t for t in strings if t.startswith(("/", "~", "\\")) or ":\\" in t], f"{path}: {strings}"


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def test_predicted_probabilities_are_maps_and_a_broken_image_gets_an_empty_mask(tmp_path):
    bundle = load_bundle(make_seg_bundle(tmp_path / "blobs", seg_task()))
    paths = make_seg_images(tmp_path / "test", n=3, size=(40, 72))
    (tmp_path / "test" / "0002.png").write_bytes(b"not an image")
    prediction = predict_paths(bundle, paths, torch.device("cpu"), tta=make_tta("hflip"), progress=False)
    assert prediction.probs.shape == (3, 1, SEG_SIZE, SEG_SIZE) and prediction.probs.dtype == np.float32
    assert prediction.shapes[0] == (40, 72) and set(prediction.failed) == {1}
    assert not prediction.probs[1].any()


@pytest.mark.parametrize("values", ["masks", "rle", "summary"])
def test_run_py_writes_each_output_format_at_each_images_size(tmp_path, values):
    task = seg_task(values=values, output={"values": values, "id": "filename"} if values == "rle" else {"values": values})
    make_seg_bundle(tmp_path / "w" / "blobs", task, rule={"threshold": [0.5], "min_area": [0.0]})
    make_seg_images(tmp_path / "testB", n=4, size=(48, 80))
    assert run.main(["--weights", str(tmp_path / "w"), "--test-dir", str(tmp_path / "testB"), "--out-dir",
                     str(tmp_path / "out"), "--quiet"]) == 0
    out = tmp_path / "out" / task.output.file
    if values == "masks":
        written = sorted(p.name for p in out.iterdir())
        assert written == ["0001.png", "0002.png", "0003.png", "0004.png"]
        assert M.load_mask(out / "0001.png", (255,)).shape == (48, 80)
    elif values == "rle":
        frame = pd.read_csv(out, keep_default_na=False)
        assert list(frame.columns) == ["img_name", "class", "rle"] and frame["img_name"].tolist()[0] == "0001.png"
    else:
        frame = pd.read_csv(out)
        assert list(frame.columns) == ["id", "p_blob", "area_blob"] and frame["p_blob"].between(0, 1).all()
    from model.check import check_submission
    from model.runner import RunOptions
    from tests.helpers import PROJECT
    report = check_submission(PROJECT, RunOptions(tmp_path / "testB", tmp_path / "o", tmp_path / "w"), 10, 3)
    assert not [p for p in report.problems if "blobs" in p or "dry run" in p], report.problems


def test_a_classification_and_a_segmentation_bundle_side_by_side_one_broken(tmp_path, capsys):
    make_bundle(tmp_path / "w" / "cla", "cla")
    make_seg_bundle(tmp_path / "w" / "blobs", seg_task(test_folder="seg"))
    test_dir = make_test_folder(tmp_path / "testB", n=3)
    make_seg_images(test_dir / "seg", n=3)
    args = ["--weights", str(tmp_path / "w"), "--test-dir", str(test_dir), "--out-dir", str(tmp_path / "out"), "--quiet"]
    assert run.main(args) == 0
    assert len(pd.read_csv(tmp_path / "out/cla_pre.csv")) == 3 and len(list((tmp_path / "out/blobs_masks").iterdir())) == 3
    (tmp_path / "w/blobs/fold0.pt").write_bytes(b"tampered")
    assert run.main(args) == 1
    err = capsys.readouterr().err
    assert "fold0.pt: sha256" in err and "blobs_masks: left by an earlier run; moved to blobs_masks.stale" in err
    assert (tmp_path / "out/blobs_masks.stale").is_dir() and not (tmp_path / "out/blobs_masks").exists()
    assert len(pd.read_csv(tmp_path / "out/cla_pre.csv")) == 3
    shutil.copytree(tmp_path / "w/cla", tmp_path / "w/cla2")        # now cla breaks and blobs is whole again
    make_seg_bundle(tmp_path / "w" / "blobs", seg_task(test_folder="seg"))
    (tmp_path / "w/cla/manifest.json").write_text("[" * 100_000)
    assert run.main(args) == 1
    assert "nested too deeply" in capsys.readouterr().err
    assert len(list((tmp_path / "out/blobs_masks").iterdir())) == 3


def test_model_score_agrees_with_our_own_dice_on_the_same_masks(tmp_path):
    task = seg_task(data={"reader": "image-mask-folders", "group_pattern": "^(000[1-3])"})
    make_seg_images(tmp_path / "gt_images", n=6, masks=tmp_path / "gt")
    make_seg_images(tmp_path / "pred_images", n=6, masks=tmp_path / "pred" / task.output.file, start=2)
    (tmp_path / "pred" / task.output.file / "0006.png").unlink()          # one image never predicted
    report = score_folder(tmp_path / "pred", tmp_path / "gt", [task])   # test_folder ".": the truth is GT_DIR itself
    scores = report["blobs"]["scores"]
    truth = [M.load_mask(tmp_path / "gt" / f"{i:04d}.png", (255,)) for i in range(1, 7)]
    predicted = [M.load_mask(tmp_path / "pred" / task.output.file / f"{i:04d}.png", (255,)) for i in range(1, 6)]
    predicted.append(np.zeros_like(truth[-1]))
    counts = M.pixel_counts(np.stack(predicted), np.stack(truth), 1)
    ours = M.segmentation_scores(counts, np.array(["0001", "0002", "0003", "0004", "0005", "0006"]))
    assert scores["dice_per_image"] == pytest.approx(ours["dice_per_image"])
    assert scores["iou"] == pytest.approx(ours["iou"]) and scores["sensitivity"] == pytest.approx(ours["sensitivity"])
    assert "1 image(s) have no predicted mask (scored as empty): ['0006']" in report["blobs"]["problems"]
    shutil.rmtree(tmp_path / "pred" / task.output.file)
    (tmp_path / "pred" / task.output.file).mkdir()
    with pytest.raises(ScoreError, match="no predicted mask matches a true mask"):
        score_folder(tmp_path / "pred", tmp_path / "gt", [task])


def make_patients(root, patients=6, slices=5, size=(64, 64)):
    """The images/ + masks/ layout (nnU-Net 2D style): P<k>_<n>.png in both, most slices with a lesion."""
    from model.synthetic import fake_scan
    from tests.helpers import save_image
    for p in range(patients):
        for n in range(slices):
            image, mask = fake_scan(100 * p + n, size, lesion=n % 4 != 3)
            save_image(root / "images" / f"P{p}_{n}.png", image)
            save_image(root / "masks" / f"P{p}_{n}.png", mask)
    return root


NEVER_SEEN = """\
name: spots
kind: segmentation
classes: {spot: 255}
data: {reader: image-mask-folders, group_pattern: "^(P[0-9]+)_"}
output: {values: rle, id: filename}
train: {backbone: test_efficientnet, pretrained: none, img_size: 64, epochs: 2, batch_size: 8, n_folds: 3, workers: 0}
"""


@pytest.mark.slow
def test_a_never_seen_segmentation_dataset_trains_exports_predicts_and_scores(tmp_path, capsys):
    from model.score import main as score_main
    from model.training.cli import main as train_main
    from tests.helpers import write_task
    task_file = write_task(tmp_path / "spots.yaml", NEVER_SEEN)
    data = make_patients(tmp_path / "data")
    run_dir, bundle = tmp_path / "run", tmp_path / "bundles" / "spots"
    assert train_main(["--task", str(task_file), "--data", str(data), "--out", str(run_dir),
                       "--set", f"folds_dir={tmp_path / 'folds'}"]) == 0
    samples = pd.read_csv(run_dir / "samples.csv", keep_default_na=False)
    assert samples.groupby("group")["fold"].nunique().max() == 1 and samples["fold"].nunique() == 3
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"dice", "dice_per_image", "iou", "sensitivity", "specificity"} <= set(metrics["oof_tuned_rule"])
    assert len(metrics["per_fold"]) == 3 and "probe" in metrics and "detection" in metrics["oof_tuned_rule"]
    for name in ("dice.png", "errors.png", "fold0/curves.png", "masks.npz", "probe/oof.npy"):
        assert (run_dir / name).is_file(), name
    assert train_main(["export", str(run_dir), "--out", str(bundle)]) == 0
    test_dir, gt_dir = tmp_path / "test", tmp_path / "gt"
    test_dir.mkdir()
    gt_dir.mkdir()
    for path in sorted((data / "images").glob("P[45]_*.png")):      # two patients' scans as a test set
        shutil.copy(path, test_dir / path.name)
        shutil.copy(data / "masks" / path.name, gt_dir / path.name)
    assert run.main(["--weights", str(bundle), "--test-dir", str(test_dir), "--out-dir", str(tmp_path / "out"),
                     "--quiet"]) == 0
    capsys.readouterr()
    assert score_main([str(tmp_path / "out"), str(tmp_path / "gt"), "--weights", str(bundle),
                       "--json", str(tmp_path / "score.json")]) == 0
    reported = json.loads((tmp_path / "score.json").read_text())["spots"]["scores"]
    from model.outputs import masks as mask_outputs
    shapes = {p.name: (64, 64) for p in sorted(test_dir.iterdir())}
    predicted, problems = mask_outputs.read_rle_csv(tmp_path / "out/spots_pre.csv", shapes, ("spot",))
    assert not problems
    names = sorted(shapes)
    counts = M.pixel_counts(np.stack([predicted[n] for n in names]),
                            np.stack([M.load_mask(tmp_path / "gt" / n, (255,)) for n in names]), 1)
    ours = M.segmentation_scores(counts, np.array([n.split("_")[0] for n in names]))
    assert reported["dice"] == pytest.approx(ours["dice"]) and reported["iou"] == pytest.approx(ours["iou"])
    assert f"dice {ours['dice']:.4f}" in capsys.readouterr().out


@pytest.mark.slow
def test_the_segmentation_search_space_tunes(tmp_path):
    from model.training.config import build_config
    from model.training.tune import SPACES, tune
    from tests.helpers import write_task
    task = task_from_dict(__import__("yaml").safe_load(NEVER_SEEN), str(write_task(tmp_path / "t.yaml", NEVER_SEEN)))
    data = make_patients(tmp_path / "data", patients=3, slices=4)
    base = build_config(task, overrides={"data": str(data), "folds": "0", "epochs": 1, "checkpoint_every": 0,
                                         "folds_dir": str(tmp_path / "folds")})
    pinned = {"img_size", "epochs", "architecture"}        # kept small; the rest is searched
    summary = tune(task, base, 2, None, None, "s", SPACES / "segmentation.yaml", tmp_path / "study", pinned)
    assert summary["trials"] == {"COMPLETE": 2} and set(summary["best_params"]) == {
        "lr", "weight_decay", "dice_weight", "aug_strength", "backbone_lr", "input_norm"}


def test_prediction_never_imports_the_training_engine_nor_checks_training_data(tmp_path):
    import subprocess
    import sys
    from tests.helpers import PROJECT
    folder = make_seg_bundle(tmp_path / "w" / "blobs", seg_task(data={"reader": "mask-pairs"}))
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["task"]["data"] = {"reader": "a-reader-of-the-future", "its_option": 1}   # not ours: still loads
    (folder / "manifest.json").write_text(json.dumps(manifest))
    make_seg_images(tmp_path / "testB", n=2)
    code = ("import sys, run; code = run.main(['--weights', sys.argv[1], '--test-dir', sys.argv[2], '--out-dir', "
            "sys.argv[3], '--quiet']); print(sorted(m for m in sys.modules if m.startswith('model.training'))); "
            "sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "w"), str(tmp_path / "testB"), str(tmp_path / "o")],
                          cwd=PROJECT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert len(list((tmp_path / "o" / "blobs_masks").iterdir())) == 2


def test_masks_named_after_their_images_need_no_numbers(tmp_path, capsys):
    make_seg_bundle(tmp_path / "w" / "blobs", seg_task())
    for path in make_seg_images(tmp_path / "testB", n=2):
        path.rename(path.with_name(f"TCGA_x_{path.stem}.png"))
    assert run.main(["--weights", str(tmp_path / "w"), "--test-dir", str(tmp_path / "testB"), "--out-dir",
                     str(tmp_path / "out"), "--quiet"]) == 0
    assert "problem" not in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out/blobs_masks").iterdir()) == ["TCGA_x_0001.png", "TCGA_x_0002.png"]


def test_the_pre_flight_check_validates_outputs_as_written_with_an_id_column(tmp_path):
    from model.check import check_submission
    from model.runner import RunOptions
    from tests.helpers import PROJECT
    make_seg_bundle(tmp_path / "w" / "blobs", seg_task(values="rle"))
    make_bundle(tmp_path / "w" / "cla", "cla")
    for id_mode in (None, "filename"):
        options = RunOptions(tmp_path / "testB", tmp_path / "o", tmp_path / "w", id_mode=id_mode)
        report = check_submission(PROJECT, options, 10, 3)
        assert not [p for p in report.problems if "dry run" in p or "blobs" in p or "cla" in p], report.problems


def test_per_image_normalisation_makes_the_scale_of_a_scan_irrelevant():
    from model.network import InputNorm
    norm = InputNorm([0.5] * 3, [0.5] * 3, "image")
    scans = torch.rand(2, 3, 16, 16) * 80
    scans[1, 2] = 7.0                                                  # a flat channel
    assert torch.allclose(norm(scans * 2.5 + 30), norm(scans), atol=1e-4)
    out = norm(scans)
    assert torch.allclose(out[0].mean((1, 2)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(out[0].square().mean((1, 2)), torch.ones(3), atol=1e-4)
    assert torch.equal(out[1, 2], torch.zeros(16, 16)) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="input_norm 'scan' is not one of backbone, image"):
        InputNorm([0.5] * 3, [0.5] * 3, "scan")


def test_a_per_image_normalised_gray_augmented_run_exports_that_normalisation(tmp_path):
    from model.training.cli import main as train_main
    from tests.helpers import write_task
    task_file = write_task(tmp_path / "spots.yaml", NEVER_SEEN)
    data = make_patients(tmp_path / "data", patients=3, slices=4)
    run_dir, bundle = tmp_path / "run", tmp_path / "bundles" / "spots"
    assert train_main(["--task", str(task_file), "--data", str(data), "--out", str(run_dir), "--folds", "0",
                       "--set", "epochs=1", "--set", "input_norm=image", "--set", "gray_p=0.5",
                       "--set", f"folds_dir={tmp_path / 'folds'}"]) == 0
    assert torch.load(run_dir / "fold0" / "best.pt", weights_only=True)["input_norm"] == "image"
    assert train_main(["export", str(run_dir), "--out", str(bundle)]) == 0
    assert read_manifest(bundle)["network"]["input_norm"] == "image"
    loaded = load_bundle(bundle)
    assert loaded.ensemble.norm.per_image
    from model.images import load_rgb
    scan = torch.from_numpy(load_rgb(data / "images" / "P0_0.png")).permute(2, 0, 1)[None].float()
    assert torch.allclose(loaded.ensemble(scan * 0.5), loaded.ensemble(scan), atol=1e-4)
    assert not read_manifest(make_seg_bundle(tmp_path / "plain", seg_task()))["network"]["input_norm"] == "image"


def test_a_mask_resized_to_the_network_keeps_the_class_values_and_its_borders(tmp_path):
    # Training, the out-of-fold scores and the rule tuning all read the masks _decode resizes: nearest
    # neighbour, so no class id is blended where classes meet, and no border moves.
    from PIL import Image

    from model.readers import Sample
    from model.training.dataset import _decode
    width, height = 90, 60
    mask = np.zeros((height, width), np.uint8)
    mask[:, 30:60], mask[:, 60:] = 100, 200                      # three bands: background, class 1, class 2
    mask[:30, 60:] = 50                                          # class 3 meets class 2 and class 1
    Image.fromarray(mask).save(tmp_path / "m.png")
    Image.fromarray(np.full((height, width, 3), 128, np.uint8)).save(tmp_path / "i.png")
    sample = Sample(tmp_path / "i.png", "i.png", (1, 1, 1), mask=tmp_path / "m.png")
    for size in (32, 45, 64):
        cached = _decode((sample, size, size, False, (100, 200, 50)))
        for resized in (cached.mask_train, cached.mask_eval):
            assert set(np.unique(resized)) == {0, 1, 2, 3}, size
        row = cached.mask_eval[-1]                                # the bottom row: 0 | 1 | 2
        assert abs(np.argmax(row == 1) - size / 3) <= 1 and abs(np.argmax(row == 2) - 2 * size / 3) <= 1, (size, row)
        assert abs(np.argmax(cached.mask_eval[:, -1] == 2) - size / 2) <= 1, size
        assert 2 not in cached.mask_eval[: size // 2 - 1], size     # 1 and 3 meet there: a blend would be 2


def test_a_runs_truth_masks_keep_each_images_patient_for_dice_per_volume_and_the_rule_check(tmp_path):
    # The group (the task's group_pattern) travels with the truth masks into the run folder: Dice per volume
    # pools one patient's slices, and the rule check's inner folds keep a patient whole.
    from pathlib import Path
    from types import SimpleNamespace

    import pandas as pd

    from model.readers import Sample
    masks = np.zeros((8, 8, 8), np.uint8)
    masks[:4, 2:6, 2:6] = 1
    samples = [Sample(Path(f"{p}_{i}.png"), f"{p}/{p}_{i}.png", (1,), group=p)
               for p in ("P1", "P2") for i in range(4)]
    truth = SEGMENTATION.truth(samples, SimpleNamespace(masks_eval=masks))
    assert list(truth.groups) == ["P1"] * 4 + ["P2"] * 4
    SEGMENTATION.save_truth(tmp_path, truth)
    loaded = SEGMENTATION.load_truth(tmp_path, pd.DataFrame({"key": [s.key for s in samples]}), None)
    assert list(loaded.groups) == list(truth.groups)
    for train, held_out in SEGMENTATION.rule_splits(loaded, seed=0):
        assert not set(loaded.groups[train]) & set(loaded.groups[held_out])
    # Per volume, P2 has no lesion and none is predicted (Dice 1), P1 is missed on one slice of four.
    predicted = masks.copy()
    predicted[0] = 0
    per_volume = SEGMENTATION.scores(SimpleNamespace(heads=("lesion",), metric="dice"), loaded, predicted)
    per_image = SEGMENTATION.scores(SimpleNamespace(heads=("lesion",), metric="dice"),
                                    type(loaded)(loaded.masks, [s.key for s in samples]), predicted)
    assert per_volume["dice"] != per_image["dice"]
