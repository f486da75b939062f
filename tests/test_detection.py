"""Detection as a kind: generated images with drawn squares and their VOC boxes train a tiny detector
through train.py, export, predict through run.py and are scored through model.score; the pieces the path
is made of (padded rows, box targets moved by the augmentation, the un-flip of TTA, the fusion of folds)
each tested on their own."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import run
from model.boxes import Detections, detections, pad
from model.kinds import DETECTION
from model.score import main as score_main
from model.synthetic import save_image
from model.training.cli import main as train_main
from model.training.dataset import TrainDataset, build_cache
from tests.helpers import (det_task, make_bundle, make_det_bundle, make_seg_bundle, make_seg_images,
                           make_test_folder, seg_task, write_task)

TINY = ["--set", "backbone=test_efficientnet", "--set", "pretrained=none", "--img-size", "64", "--workers", "0",
        "--set", "n_folds=2", "--set", "checkpoint_every=0", "--set", "ema_decay=0", "--epochs", "1",
        "--set", "batch_size=4"]


def squares(seed: int, size=(80, 96)):
    """An image with one to two bright squares (class 0) and, on odd seeds, a dim one (class 1); its boxes."""
    rng = np.random.default_rng(seed)
    h, w = size
    img = np.full((h, w, 3), 20, np.uint8)
    objects = []
    for k in range(int(rng.integers(1, 3)) + seed % 2):
        s = int(rng.integers(14, 24))
        x, y = int(rng.integers(0, w - s)), int(rng.integers(0, h - s))
        cls = 1 if k == 1 and seed % 2 else 0
        img[y:y + s, x:x + s] = 230 if cls == 0 else 120
        objects.append((("bright", "dim")[cls], x, y, x + s, y + s))
    return img, objects


def write_voc(folder, n: int, first: int = 0, numbered: bool = False):
    (folder / "Annotations").mkdir(parents=True, exist_ok=True)
    for i in range(first, first + n):
        img, objects = squares(i)
        stem = f"{i - first + 1:04d}" if numbered else f"img{i}"
        save_image(folder / "JPEGImages" / f"{stem}.png", img)
        if i == 0:
            objects = [*objects, ("bright", 40, 10, 40, 30)]     # no width, as two of BCCD's: dropped
        boxes = "".join(f"<object><name>{c}</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax>"
                        f"<ymax>{y2}</ymax></bndbox></object>" for c, x1, y1, x2, y2 in objects)
        (folder / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><path>/elsewhere/{stem}.png</path><size><width>96</width><height>80</height>"
            f"<depth>3</depth></size>{boxes}</annotation>")


def test_padded_rows_round_trip_and_empty_rows_are_no_boxes():
    found = Detections(np.array([[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.9, 0.8]]), np.array([0.4, 0.9]), np.array([1, 0]))
    rows = pad(found, 5)
    assert rows.shape == (5, 6) and rows[0, 4] == pytest.approx(0.9) and (rows[2:, 5] == -1).all()
    back = detections(rows)
    assert np.allclose(back.boxes, found.boxes[::-1]) and list(back.labels) == [0, 1]
    assert len(detections(np.zeros((3, 6)) - np.array([0, 0, 0, 0, 0, 1])).boxes) == 0


def test_flip_tta_puts_boxes_back_and_folds_fuse_into_one_box():
    import ttach
    rows = torch.tensor(pad(Detections(np.array([[0.1, 0.2, 0.3, 0.5]]), np.array([0.8]), np.array([0])), 4))[None]
    flip = list(ttach.Compose([ttach.HorizontalFlip()]))[1]   # the identity view comes first
    flipped = rows.clone()
    flipped[0, 0, [0, 2]] = 1 - rows[0, 0, [2, 0]]          # what the network sees in the flipped view
    back = DETECTION.deaugment(flip, flipped)
    assert torch.allclose(back[0, 0, :4], rows[0, 0, :4], atol=1e-6)
    # Two folds that found nearly the same box: one fused box, scored their mean.
    other = rows.clone()
    other[0, 0, :4] += 0.01
    other[0, 0, 4] = 0.6
    fused = DETECTION.combine(torch.stack([rows, other]))
    kept = detections(fused[0].numpy())
    assert len(kept.boxes) == 1 and kept.scores[0] == pytest.approx(0.7, abs=1e-5)
    assert kept.boxes[0, 0] == pytest.approx(0.105, abs=1e-3)


def test_box_targets_move_with_the_flipped_image(tmp_path):
    write_voc(tmp_path / "data", 2)
    task = write_task(tmp_path / "t.yaml", "name: sq\nkind: detection\nclasses: [bright, dim]\ndata: {reader: voc}\n")
    from model.readers import read_dataset
    from model.task import load_task
    _, result = read_dataset(load_task(task), tmp_path / "data")
    cache, errors = build_cache(result.samples, 64, 1.0, crop_border=False)
    truth = DETECTION.truth(result.samples, cache)
    targets, masks = DETECTION.encode(truth, 2)
    dataset = TrainDataset(cache, targets, masks, 64, 0.0, 0.0, box_targets=True)
    for seed in range(6):   # the flip is drawn per seed: both outcomes occur
        image, target, _ = dataset[(seed, 0)]
        kept = target[target[:, 0] >= 0]
        assert len(kept) == (truth[0, :, 0] >= 0).sum()
        for _, x1, y1, x2, y2 in kept.numpy():   # each box still frames a bright square
            patch = image[:, int(y1 * 64) + 2:int(y2 * 64) - 2, int(x1 * 64) + 2:int(x2 * 64) - 2].float()
            assert patch.mean() > 100


@pytest.mark.slow
def test_a_detection_task_trains_exports_predicts_and_is_scored_through_the_public_commands(tmp_path, capsys):
    write_voc(tmp_path / "data", 16)
    task = write_task(tmp_path / "sq.yaml", "name: squares\nkind: detection\nclasses: [bright, dim]\n"
                                            "data: {reader: voc}\ntest_folder: squares\n"
                                            "output: {values: boxes, id: filename}\n")
    common = ["--task", str(task), "--data", str(tmp_path / "data"), "--set", f"folds_dir={tmp_path / 'folds'}"]
    assert train_main([*common, "--out", str(tmp_path / "run"), *TINY]) == 0
    assert "squares: 1 box(es) dropped (no width or height) and 0 clipped" in (tmp_path / "run" / "train.log").read_text()
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics["oof_default_rule"]) >= {"map", "map50", "f1", "ap"} and "probe" in metrics
    assert (tmp_path / "run" / "pr.png").is_file() and (tmp_path / "run" / "errors.png").is_file()
    assert train_main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "weights" / "squares")]) == 0
    manifest = json.loads((tmp_path / "weights" / "squares" / "manifest.json").read_text())
    assert manifest["network"]["outputs"]["type"] == "boxes"

    write_voc(tmp_path / "gt" / "squares", 4, first=100)    # the truth, in the layout the task trains on
    for image in (tmp_path / "gt" / "squares" / "JPEGImages").iterdir():
        save_image(tmp_path / "test" / "squares" / image.name, np.asarray(Image.open(image)))
    assert run.main(["--weights", str(tmp_path / "weights"), "--test-dir", str(tmp_path / "test"),
                     "--out-dir", str(tmp_path / "out"), "--quiet", "--workers", "0", "--tta", "hflip"]) == 0
    rows = (tmp_path / "out" / "squares_pre.csv").read_text().splitlines()
    assert rows[0] == "img_name,class,score,x1,y1,x2,y2"
    assert {r.split(",")[0] for r in rows[1:]} == {f"img{i}.png" for i in range(100, 104)}

    capsys.readouterr()
    assert score_main([str(tmp_path / "out"), str(tmp_path / "gt"),
                       "--weights", str(tmp_path / "weights")]) == 0
    assert "squares" in capsys.readouterr().out


@pytest.mark.parametrize("values", ["boxes", "prediction-string", "coco", "summary"])
def test_run_serves_a_detection_bundle_beside_the_others_and_one_failing_costs_them_nothing(tmp_path, capsys, values):
    make_bundle(tmp_path / "w" / "cla", "cla")
    make_seg_bundle(tmp_path / "w" / "blobs", seg_task(test_folder="seg"))
    make_det_bundle(tmp_path / "w" / "cells", det_task(values=values, test_folder="cells"))
    test_dir = make_test_folder(tmp_path / "testB", n=3)
    make_seg_images(test_dir / "seg", n=3)
    make_seg_images(test_dir / "cells", n=3, size=(70, 90))
    args = ["--weights", str(tmp_path / "w"), "--test-dir", str(test_dir), "--out-dir", str(tmp_path / "out"),
            "--workers", "0", "--tta", "hflip"]
    assert run.main(args) == 0
    out = capsys.readouterr()
    assert "ONNX Runtime not used for cells: its folds' and views' boxes are fused by Weighted Boxes Fusion" in out.err
    written = tmp_path / "out" / ("cells_pre.json" if values == "coco" else "cells_pre.csv")
    from model.outputs.boxes import read_detections
    found = read_detections(written, values, "id", ["bright", "dim"])
    assert values == "coco" or set(found) == {"1", "2", "3"}
    assert len(list((tmp_path / "out" / "blobs_masks").iterdir())) == 3
    (tmp_path / "w" / "cells" / "fold1.pt").write_bytes(b"tampered")      # now the detector fails alone
    assert run.main(args) == 1
    err = capsys.readouterr().err
    assert "fold1.pt: sha256" in err and f"{written.name}: left by an earlier run; moved to {written.name}.stale" in err
    assert len(list((tmp_path / "out" / "blobs_masks").iterdir())) == 3 and (tmp_path / "out" / "cla_pre.csv").is_file()


def test_a_task_file_may_rename_the_box_columns_and_they_are_written_and_read_back(tmp_path):
    from model.outputs.boxes import read_detections, write_detections
    task = det_task(output={"values": "boxes", "columns": ["label", "confidence", "xmin", "ymin", "xmax", "ymax"]})
    found = [Detections(np.array([[1.0, 2.0, 30.5, 40.0]]), np.array([0.75]), np.array([1])),
             Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))]
    write_detections(tmp_path / "p.csv", "boxes", ["1", "2"], "id", task.heads, found, columns=task.output.columns)
    assert (tmp_path / "p.csv").read_text().splitlines()[:2] == ["id,label,confidence,xmin,ymin,xmax,ymax",
                                                                  "1,dim,0.75,1,2,30.5,40"]
    back = read_detections(tmp_path / "p.csv", "boxes", "id", task.heads, task.output.columns)
    assert np.allclose(back["1"].boxes, found[0].boxes) and len(back["2"].boxes) == 0
    with pytest.raises(ValueError, match="lacks"):
        read_detections(tmp_path / "p.csv", "boxes", "id", task.heads)      # the default headers are not there
