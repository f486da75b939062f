"""The readers of boxes (voc, yolo, coco, csv box rows, boxes from masks) on tiny generated files, for a
detection task and for the classification tasks they feed; on BCCD, the BI-RADS labels and LGG when
../shared/data holds them.

Until the detection kind lands, a toy kind with the ``boxes`` label layout stands for it (registered as
tests/test_new_kind.py registers its toy)."""
from __future__ import annotations

import collections
import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest

from model.kinds.classification import SingleLabel
from model.readers import read_dataset
from model.registry import kinds, register, unregister
from model.synthetic import save_image
from model.task import TaskFileError, task_from_dict
from tests.helpers import SHARED_DATA

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BCCD, LGG = DATA / "bccd", DATA / "lgg-mri"


class ToyBoxes(SingleLabel):
    """A stand-in for the detection kind: classes: a list of object classes, labels read as boxes."""

    name = "toy-boxes"
    min_heads = 1
    label_layout = "boxes"
    binary_positive = False


@pytest.fixture(autouse=True)
def toy_kind():
    register(ToyBoxes)
    yield kinds()["toy-boxes"]
    unregister("toy-boxes")


def task(classes=("a", "b"), kind="toy-boxes", **data):
    key = "labels" if kind == "multi-label" else "classes"
    return task_from_dict({"name": "boxes", "kind": kind, key: list(classes), "data": data}, "<test>")


def image(path: Path, width: int = 40, height: int = 30) -> Path:
    return save_image(path, np.full((height, width, 3), 90, np.uint8))


def read(task_, data):
    _, result = read_dataset(task_, data)
    return result


def ok(task_, data):
    result = read(task_, data)
    assert not result.problems, "\n".join(result.problems)
    return {s.path.stem: s for s in result.samples}


def assert_one(problems: list[str], *parts: str) -> None:
    """Exactly one problem holds every one of ``parts``."""
    hits = [p for p in problems if all(part in p for part in parts)]
    assert len(hits) == 1, f"{parts} in:\n" + "\n".join(problems)


# --- voc -------------------------------------------------------------------------------------------------

def voc_xml(objects=(), size=(40, 30), extra: str = "") -> str:
    """A VOC annotation as labelImg writes it; <folder>, <filename> and <path> name another machine."""
    body = "".join(f"<object><name>{name}</name><pose>Unspecified</pose><difficult>0</difficult><bndbox>"
                   f"<xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
                   for name, (x1, y1, x2, y2) in objects)
    sized = f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>" if size else ""
    return (f"<annotation><folder>elsewhere</folder><filename>other.jpg</filename>"
            f"<path>C:\\labeller\\other.jpg</path>{sized}{extra}{body}</annotation>")


def make_voc(root: Path, files: dict) -> Path:
    """Images in root/JPEGImages and, for each stem whose value is not None, its XML in root/Annotations."""
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    for stem, text in files.items():
        image(root / "JPEGImages" / f"{stem}.jpg")
        if text is not None:
            (root / "Annotations" / f"{stem}.xml").write_text(text, encoding="utf-8")
    return root


def test_voc_reads_boxes_by_the_xml_stem_and_an_image_without_objects(tmp_path):
    root = make_voc(tmp_path / "voc", {"p1": voc_xml([("a", (5, 4, 20, 14)), ("b", (10, 10, 40, 30))]),
                                       "p2": voc_xml([]), "p3": None})
    samples = ok(task(reader="voc", missing_xml="empty"), root)
    assert sorted(samples) == ["p1", "p2", "p3"]
    one = samples["p1"]
    assert one.key == "JPEGImages/p1.jpg" and one.path == root / "JPEGImages" / "p1.jpg"   # not <path>
    assert one.objects == ((0, 5.0, 4.0, 20.0, 14.0), (1, 10.0, 10.0, 40.0, 30.0)) and one.labels == (1, 1)
    np.testing.assert_allclose(one.boxes[0], (12.5 / 40, 9 / 30, 15 / 40, 10 / 30))
    assert samples["p2"].objects == samples["p3"].objects == () and samples["p2"].labels == (0, 0)
    # The VOC devkit's 1-based inclusive indices: one pixel more at the top and left.
    one_based = ok(task(reader="voc", missing_xml="empty", coordinates="one-based"), root)["p1"]
    assert one_based.objects[0] == (0, 4.0, 3.0, 20.0, 14.0)


def test_voc_annotations_beside_their_images_and_class_names(tmp_path):
    folder = tmp_path / "labelimg"
    image(folder / "s1.png")
    (folder / "s1.xml").write_text(voc_xml([("RBC ", (1, 1, 9, 9)), ("rbc", (2, 2, 8, 8)), ("ruler", (0, 0, 5, 5))]))
    samples = ok(task(["cell"], reader="voc", annotations=".", images=".", group_pattern="^([a-z]+)",
                      class_names={"RBC": "cell", "rbc": "cell", "ruler": None}), folder)
    assert [o[0] for o in samples["s1"].objects] == [0, 0]       # ruler left out; names stripped
    assert samples["s1"].group == "s"


def test_voc_lists_every_problem_at_once_and_counts_dropped_and_clipped_boxes(tmp_path, caplog):
    root = make_voc(tmp_path / "voc", {
        "good": voc_xml([("a", (0, 0, 10, 10))]),
        "unknown": voc_xml([("c", (1, 1, 5, 5)), ("c", (2, 2, 6, 6)), ("a", (1, 1, 5, 5))]),
        "unknown2": voc_xml([("Dog", (1, 1, 5, 5))]),
        "noxml": None,
        "doctype": '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e "boom">]><annotation>&e;</annotation>',
        "broken": "<annotation><object>",
        "resized": voc_xml([("a", (1, 1, 5, 5))], size=(80, 60)),
        "nobox": voc_xml(extra="<object><name>a</name></object>"),
        "words": voc_xml([("b", ("one", 1, 5, 5))]),
        "outside": voc_xml([("a", (50, 1, 60, 5))]),
        "flat": voc_xml([("a", (5, 5, 5, 9)), ("b", (30, 20, 50, 40))]),   # dropped, and clipped
    })
    (root / "Annotations" / "ghost.xml").write_text(voc_xml([("a", (1, 1, 5, 5))]))
    with caplog.at_level(logging.WARNING, "model.readers"):
        result = read(task(reader="voc"), root)
    problems, xml = result.problems, root / "Annotations"
    assert_one(problems, f"{xml / 'unknown.xml'}: class 'c' (2 objects) is not one the task reads ('a', 'b')",
               "class_names")
    assert_one(problems, f"{xml / 'unknown2.xml'}: class 'Dog' (1 object)")
    assert_one(problems, f"{root / 'JPEGImages' / 'noxml.jpg'}: no annotation", "missing_xml: empty")
    assert_one(problems, "doctype.xml: has a DOCTYPE declaration, refused")
    assert_one(problems, "broken.xml: not valid XML")
    assert_one(problems, "resized.xml: the annotation gives the image resized.jpg the size 80x60 but it is 40x30")
    assert_one(problems, "nobox.xml: object 1 (a) has no <bndbox>")
    assert_one(problems, "words.xml: object 1 (b): <bndbox>", "is not four numbers")
    assert_one(problems, "outside.xml: box 1 (50, 1, 60, 5) of class 'a': wholly outside the 40x30 image")
    assert_one(problems, f"{xml / 'ghost.xml'}: annotation without its image")
    assert len(problems) == 10, "\n".join(problems)
    assert [s.path.stem for s in result.samples] == ["flat", "good"]
    assert result.dropped == [f"{xml / 'flat.xml'}: box 1 (5, 5, 5, 9) of class 'a': zero width, dropped"]
    assert result.clipped == [f"{xml / 'flat.xml'}: box 2 (30, 20, 50, 40) of class 'b': partly outside the 40x30 "
                              "image, clipped to (30, 20, 40, 30)"]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned.count(result.dropped[0]) == 1 and warned.count(result.clipped[0]) == 1
    # Images refused for their labels are decoded later, so a broken image is reported beside them.
    assert {p.stem for p in result.unlabelled} == {"unknown", "unknown2", "noxml", "doctype", "broken", "resized",
                                                   "nobox", "words", "outside"}


def test_voc_feeds_a_single_label_task_with_no_box_class_and_a_multi_label_task(tmp_path):
    root = make_voc(tmp_path / "ct", {"h1": voc_xml([("haemorrhage", (1, 1, 9, 9)), ("haemorrhage", (20, 2, 30, 9))]),
                                      "h2": voc_xml([("haemorrhage", (5, 5, 5, 9))]),    # dropped: still its class
                                      "n1": voc_xml([])})
    binary = task(["none", "haemorrhage"], kind="single-label", reader="voc", no_box_class="none")
    samples = ok(binary, root)
    assert {stem: s.labels for stem, s in samples.items()} == {"h1": (1,), "h2": (1,), "n1": (0,)}
    assert len(samples["h1"].boxes) == 2 and samples["h1"].objects[1] == (1, 20.0, 2.0, 30.0, 9.0)
    assert samples["h2"].boxes == () and samples["n1"].boxes == ()
    findings = task(["haemorrhage", "fracture"], kind="multi-label", reader="voc")
    assert {stem: s.labels for stem, s in ok(findings, root).items()} == {"h1": (1, 0), "h2": (1, 0), "n1": (0, 0)}
    # Two classes on one image, and an image without boxes where the task names no class for it.
    (root / "Annotations" / "h1.xml").write_text(voc_xml([("none", (1, 1, 9, 9)), ("haemorrhage", (2, 2, 8, 8))]))
    result = read(task(["none", "haemorrhage"], kind="single-label", reader="voc"), root)
    assert_one(result.problems, "h1.xml: boxes of 2 classes (none, haemorrhage); a single-label task takes one class")
    assert_one(result.problems, "n1.xml: no box, so no class; set the reader's no_box_class:")
    assert len(result.problems) == 2


@pytest.mark.parametrize("kind, classes, data, message", [
    ("multi-label", ["a", "b"], {"no_box_class": "a"}, "no_box_class: for single-label tasks"),
    ("single-label", ["a", "b"], {"no_box_class": "c"}, "no_box_class 'c' is not one of the task's classes"),
    ("toy-boxes", ["a", "b"], {"class_names": {"x": "c"}}, "class_names: x: 'c' is not one of the task's classes"),
    ("multi-label", ["a", "b"], {"class_names": {"x": "a"}}, "no box can be of class 'b' (class_names maps no name"),
    ("single-label", ["none", "a", "b"], {"class_names": {"x": "a"}, "no_box_class": "none"},
     "no box can be of class 'b'"),
    ("toy-boxes", ["a"], {"coordinates": "pixels"}, "coordinates 'pixels': one of corners, one-based"),
    ("toy-boxes", ["a"], {"missing_xml": "skip"}, "missing_xml 'skip': one of error, empty"),
    ("toy-boxes", ["a"], {"xml_folder": "x"}, "unknown key 'xml_folder'"),
])
def test_voc_options_are_checked_against_the_task_when_the_task_file_is_read(kind, classes, data, message):
    with pytest.raises(TaskFileError, match=message.replace("(", r"\(")):
        task(classes, kind=kind, reader="voc", **data)


def test_readers_of_other_layouts_refuse_a_detection_task_and_mask_values_are_checked():
    with pytest.raises(TaskFileError, match="reader class-folders reads single-label tasks, not toy-boxes"):
        task(reader="class-folders")
    with pytest.raises(TaskFileError, match="mask_values: required for 2 classes"):
        task(reader="mask-pairs")
    with pytest.raises(TaskFileError, match="mask_values: expected 2 distinct whole number"):
        task(reader="image-mask-folders", mask_values=[1, 1])
    with pytest.raises(TaskFileError, match="mask_values: for detection tasks"):
        task_from_dict({"name": "s", "kind": "segmentation", "classes": {"a": 255},
                        "data": {"reader": "mask-pairs", "mask_values": [255]}}, "<test>")
    with pytest.raises(TaskFileError, match="box_columns: required for a detection task"):
        task(reader="csv")


@pytest.mark.skipif(not BCCD.is_dir(), reason="../shared/data/bccd is not present")
def test_voc_reads_bccd_in_seconds_and_drops_its_two_degenerate_boxes():
    start = time.perf_counter()
    result = read(task(["RBC", "WBC", "Platelets"], reader="voc"), BCCD)
    elapsed = time.perf_counter() - start
    assert not result.problems and len(result.samples) == 292 and elapsed < 20
    counts = collections.Counter(o[0] for s in result.samples for o in s.objects)
    assert counts == {0: 3348, 1: 301, 2: 292}          # the README's 3,350 RBC less the two degenerate ones
    assert len(result.dropped) == 2 and not result.clipped
    assert all("zero width, dropped" in m and "of class 'RBC'" in m for m in result.dropped)
    assert {Path(m.split(":")[0]).name for m in result.dropped} == {"BloodImage_00338.xml", "BloodImage_00343.xml"}


# --- yolo ------------------------------------------------------------------------------------------------

def test_yolo_reads_ultralytics_splits_with_data_yaml_names_polygons_and_empty_or_missing_label_files(tmp_path):
    root = tmp_path / "ds"
    for split, stem in (("train", "t1"), ("train", "t2"), ("train", "t3"), ("val", "v1")):
        image(root / "images" / split / f"{stem}.png")
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    (root / "labels" / "train" / "t1.txt").write_text("0 0.5 0.5 0.5 0.2\n1 0.25 0.5 0.1 0.2\n")
    (root / "labels" / "train" / "t2.txt").write_text("\n")                        # empty: no objects
    (root / "labels" / "val" / "v1.txt").write_text("1 0.1 0.2 0.3 0.2 0.3 0.6 0.1 0.6\n")   # a polygon
    (root / "labels" / "train.cache").write_text("ultralytics' cache: not a label file")
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nnames: {0: lesion, 1: cyst}\n")
    samples = ok(task(["cyst", "lesion"], reader="yolo"), root)                     # the task's own order
    assert sorted(samples) == ["t1", "t2", "t3", "v1"] and samples["t1"].key == "images/train/t1.png"
    assert samples["t1"].objects == ((1, 10.0, 12.0, 30.0, 18.0), (0, 8.0, 12.0, 12.0, 18.0))
    assert samples["t2"].objects == samples["t3"].objects == () and samples["t3"].labels == (0, 0)
    np.testing.assert_allclose(samples["v1"].objects[0][1:], (4, 6, 12, 18))


def test_yolo_reads_class_folders_with_one_based_ids_or_as_one_class(tmp_path):
    train = tmp_path / "comp" / "train"
    for folder, line in (("2类", "1 0.5 0.5 0.5 0.5"), ("3类", "2 0.5 0.5 0.25 0.5")):
        image(train / folder / "images" / "case1.png" if folder == "2类" else train / folder / "images" / "case2.jpg")
        (train / folder / "labels").mkdir()
        (train / folder / "labels" / ("case1.txt" if folder == "2类" else "case2.txt")).write_text(line + "\n")
    samples = ok(task(["2类", "3类"], reader="yolo", index_base=1), tmp_path / "comp")
    assert samples["case1"].objects[0][0] == 0 and samples["case2"].objects[0][0] == 1
    lesions = ok(task(["lesion"], reader="yolo", one_class=True), tmp_path / "comp")
    assert [s.objects[0][0] for s in lesions.values()] == [0, 0]
    # BI-RADS as a classification task over its own boxes: the class of an image is its box's.
    cla = ok(task(["2类", "3类"], kind="single-label", reader="yolo", index_base=1), tmp_path / "comp")
    assert cla["case2"].labels == (1,) and cla["case2"].boxes == ((0.5, 0.5, 0.25, 0.5),)


def test_yolo_lists_every_problem_at_once(tmp_path):
    root = tmp_path / "ds"
    for stem in ("ok", "bad", "id", "far", "twin"):
        image(root / "images" / f"{stem}.png")
    image(root / "images" / "twin.jpg")                                              # two images, one label file
    (root / "labels").mkdir()
    (root / "labels" / "ok.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (root / "labels" / "bad.txt").write_text("0 0.5 0.5 0.2\nzero 0.5 0.5 0.2 0.2\n")
    (root / "labels" / "id.txt").write_text("2 0.5 0.5 0.2 0.2\n2 0.5 0.5 0.1 0.1\n")
    (root / "labels" / "far.txt").write_text("0 30 20 4 4\n")                         # pixels, not relative
    (root / "labels" / "ghost.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    image(root / "more" / "images" / "x.png")                                         # no more/labels/ at all
    result = read(task(reader="yolo"), root)
    problems = result.problems
    assert_one(problems, "bad.txt:1: '0 0.5 0.5 0.2' is not '<class id> xc yc w h'")
    assert_one(problems, "bad.txt:2: 'zero 0.5 0.5 0.2 0.2' is not")
    assert_one(problems, "id.txt: class id 2 (2 lines) is not one of the ids the task reads (0, 1)", "index_base")
    assert_one(problems, "far.txt:1: '0 30 20 4 4': a coordinate above 2", "not in pixels")
    assert_one(problems, "twin.png: same name as twin.jpg", "so each label file matches one image")
    assert_one(problems, f"{root / 'labels' / 'ghost.txt'}: label file without an image")
    assert_one(problems, f"{root / 'more' / 'images'}: no labels/ folder beside it")
    assert len(problems) == 7, "\n".join(problems)
    assert [s.path.name for s in result.samples] == ["ok.png", "twin.jpg"]     # no label file: no objects
    assert {p.name for p in result.unlabelled} == {"bad.png", "id.png", "far.png", "x.png"}


@pytest.mark.parametrize("data, message", [
    ({"one_class": True}, "one_class: true needs a task of one class"),
    ({"one_class": True, "class_names": {"1": "a"}}, "one_class: true gives every box the task's one class"),
    ({"index_base": 2}, "index_base 2: 0 or 1"),
    ({"images": "x", "labels": "x"}, "expected two different folder names"),
])
def test_yolo_options_are_checked(data, message):
    with pytest.raises(TaskFileError, match=message):
        task(reader="yolo", **data)


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data/breast-lesions-usg is not present")
def test_yolo_reads_the_birads_labels_as_they_are():
    train = "乳腺分类训练数据集/train"
    lesions = read(task(["lesion"], reader="yolo", subfolder=train, one_class=True), SHARED_DATA)
    assert not lesions.problems and not lesions.clipped and not lesions.dropped
    assert len(lesions.samples) == 150 and sum(len(s.objects) for s in lesions.samples) == 150
    classes = ("2类", "3类", "4A类", "4B类", "4C类", "5类")
    birads = read(task(classes, reader="yolo", subfolder=train, index_base=1), SHARED_DATA)
    counts = collections.Counter(classes[o[0]] for s in birads.samples for o in s.objects)
    assert counts == {"2类": 18, "3类": 22, "4A类": 26, "4B类": 27, "4C类": 30, "5类": 27}
    assert all(classes[s.objects[0][0]] in s.key for s in birads.samples)     # each box's class is its folder's


# --- coco ------------------------------------------------------------------------------------------------

def coco_file(root: Path, images, annotations, categories=((1, "a"), (2, "b"))) -> Path:
    data = {"images": [{"id": i, "file_name": name, "width": 40, "height": 30} for i, name in images],
            "annotations": [{"id": n, "image_id": i, "category_id": c, "bbox": box, "iscrowd": crowd}
                            for n, (i, c, box, crowd) in enumerate(annotations, 1)],
            "categories": [{"id": i, "name": name} for i, name in categories]}
    path = root / "annotations" / "instances_default.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return root


def test_coco_reads_listed_images_leaves_crowds_out_and_keeps_images_without_annotations(tmp_path, caplog):
    root = tmp_path / "coco"
    for name in ("c1.jpg", "c2.jpg", "sub/c3.png", "unlisted.jpg"):
        image(root / "images" / name)
    coco_file(root, [(7, "c1.jpg"), (8, "/home/labeller/c2.jpg"), (9, "sub/c3.png")],
              [(7, 2, [4, 3, 10, 6], 0), (7, 1, [0, 0, 40, 30], 1), (9, 1, [1.5, 2, 3, 4], 0)])
    with caplog.at_level(logging.WARNING, "model.readers"):
        samples = ok(task(reader="coco"), root)
    assert sorted(samples) == ["c1", "c2", "c3"]
    assert samples["c1"].objects == ((1, 4.0, 3.0, 14.0, 9.0),) and samples["c2"].objects == ()
    assert samples["c3"].objects == ((0, 1.5, 2.0, 4.5, 6.0),) and samples["c3"].key == "images/sub/c3.png"
    assert "1 crowd annotation(s) (iscrowd 1) left out" in caplog.text
    assert "1 image(s) the JSON does not list (unlisted.jpg...)" in caplog.text
    # Roboflow's export: the JSON among its images.
    roboflow = tmp_path / "roboflow" / "train"
    image(roboflow / "r1.jpg")
    (coco_file(roboflow, [(0, "r1.jpg")], [(0, 1, [2, 2, 4, 4], 0)]) / "annotations" / "instances_default.json").rename(
        roboflow / "_annotations.coco.json")
    found = ok(task(reader="coco", subfolder="train", annotations="_annotations.coco.json", images="."),
               roboflow.parent)
    assert found["r1"].objects == ((0, 2.0, 2.0, 6.0, 6.0),) and found["r1"].key == "train/r1.jpg"


def test_coco_lists_every_problem_at_once(tmp_path):
    root = tmp_path / "coco"
    for name in ("c1.jpg", "c2.jpg", "c3.jpg"):
        image(root / "images" / name)
    coco_file(root, [(1, "c1.jpg"), (2, "c2.jpg"), (3, "gone.jpg"), (1, "c3.jpg")],
              [(1, 3, [1, 1, 5, 5], 0), (2, 3, [1, 1, 5, 5], 0), (2, 1, [1, 1, 5], 0), (5, 1, [1, 1, 5, 5], 0),
               (1, 9, [1, 1, 2, 2], 0), (2, 1, [1, 1, 0, 5], 0)],
              categories=((1, "a"), (3, "tumour")))
    result = read(task(reader="coco"), root)
    json_path = root / "annotations" / "instances_default.json"
    problems = result.problems
    assert_one(problems, f"{json_path}: category 'tumour' (2 annotations on 2 images, e.g. c1.jpg, c2.jpg) is not one "
                         "the task reads ('a', 'b')")
    assert_one(problems, "annotation 3 (id 3): bbox [1, 1, 5] is not four numbers")
    assert_one(problems, "annotation 4 (id 4): image_id 5 is not one of the images listed")
    assert_one(problems, "annotation 5 (id 5): category_id 9 is not one of the categories")
    assert_one(problems, "image 'gone.jpg' not found")
    assert_one(problems, "two images with id 1 (c3.jpg)")
    assert len(problems) == 6, "\n".join(problems)
    assert not result.samples and len(result.dropped) == 1      # c2's box of no width, dropped


# --- csv box rows ----------------------------------------------------------------------------------------

def box_csv(folder: Path, name: str, lines: list[str]) -> Path:
    """Images img/s1.png .. img/s3.png and the CSV ``name`` of ``lines`` (a header first) beside them."""
    for stem in ("s1", "s2", "s3"):
        image(folder / "img" / f"{stem}.png")
    (folder / name).write_text("".join(line + "\n" for line in lines))
    return folder / name


def test_csv_reads_one_row_per_box_several_per_image_and_images_without_objects(tmp_path):
    box_csv(tmp_path, "boxes.csv", ["path,cls,patient,x,y,w,h", "img/s1.png,b,P1,0.25,0.5,0.5,0.5",
                                    "img/s1.png,a,P1,0,0,0.1,0.1", "img/s2.png,,P2,,,,",
                                    "img/s3.png,a,P2,0.5,0.5,0.75,0.5"])
    detection = task(reader="csv", file="boxes.csv", image_column="path", label_column="cls", group_column="patient",
                     box_columns=["x", "y", "w", "h"], box_format="xywh", box_units="relative")
    result = read(detection, tmp_path)
    assert not result.problems
    samples = {s.path.stem: s for s in result.samples}
    assert samples["s1"].objects == ((1, 10.0, 15.0, 30.0, 30.0), (0, 0.0, 0.0, 4.0, 3.0))
    assert samples["s1"].group == "P1" and samples["s2"].objects == () and samples["s2"].labels == (0, 0)
    assert result.clipped == [f"{tmp_path / 'boxes.csv'}, image 'img/s3.png' (line 5): box 1 (20, 15, 50, 30) of class "
                              "'a': partly outside the 40x30 image, clipped to (20, 15, 40, 30)"]


def test_csv_box_rows_list_every_problem_at_once(tmp_path):
    csv_path = box_csv(tmp_path, "train.csv", ["image,label,group,x1,y1,x2,y2", "img/s1.png,a,P1,1,1,5,5",
                                               "img/s1.png,a,P2,2,2,6,6", "img/s2.png,c,P3,1,1,5,5",
                                               "img/s3.png,a,P4,1,x,5,5", "img/s3.png,b,P4,9,1,5,5",
                                               "img/gone.png,a,P5,1,1,5,5"])
    result = read(task(reader="csv", group_column="group", box_columns=["x1", "y1", "x2", "y2"]), tmp_path)
    problems = result.problems
    assert_one(problems, f"{csv_path}, image 'img/s1.png' (lines 2, 3): its rows name 2 groups (P1, P2)")
    assert_one(problems, f"{csv_path}:4: label='c' is not one of the classes (a, b)")
    assert_one(problems, f"{csv_path}:5: box ['1', 'x', '5', '5'] is not four numbers (x1, y1, x2, y2, pixels)")
    assert_one(problems, f"{csv_path}, image 'img/s3.png' (lines 5, 6): box 1 (9, 1, 5, 5) of class 'b': x2 < x1")
    assert_one(problems, f"{csv_path}:7: image 'img/gone.png' not found")
    assert len(problems) == 5, "\n".join(problems)
    assert not result.samples


# --- boxes from masks ------------------------------------------------------------------------------------

def test_image_mask_folders_give_a_box_per_connected_component_of_each_class(tmp_path):
    mask = np.zeros((30, 40), np.uint8)
    mask[2:5, 3:9] = 1                    # class a, two components
    mask[20:28, 30:33] = 1
    mask[10:12, 10:20] = 2                # class b
    save_image(tmp_path / "masks" / "m1.png", mask)
    save_image(tmp_path / "masks" / "m2.png", np.zeros((30, 40), np.uint8))
    image(tmp_path / "images" / "m1.jpg")
    image(tmp_path / "images" / "m2.jpg")
    samples = ok(task(reader="image-mask-folders", mask_values=[1, 2]), tmp_path)
    assert samples["m1"].objects == ((0, 3.0, 2.0, 9.0, 5.0), (0, 30.0, 20.0, 33.0, 28.0), (1, 10.0, 10.0, 20.0, 12.0))
    assert samples["m1"].labels == (1, 1) and samples["m2"].objects == () and samples["m2"].labels == (0, 0)
    assert samples["m1"].mask is None
    save_image(tmp_path / "masks" / "m2.png", np.full((30, 40), 7, np.uint8))
    assert_one(read(task(reader="image-mask-folders", mask_values=[1, 2]), tmp_path).problems,
               "m2.png: mask value(s) 7", "set the reader's mask_values: to")


@pytest.mark.skipif(not LGG.is_dir(), reason="../shared/data/lgg-mri is not present")
def test_mask_pairs_make_lgg_a_one_class_detection_set():
    result = read(task(["abnormality"], reader="mask-pairs", subfolder="kaggle_3m",
                       group_pattern="^(TCGA_[A-Z0-9]+_[A-Z0-9]+)"), LGG)
    assert not result.problems and len(result.samples) == 781
    counts = collections.Counter(len(s.objects) for s in result.samples)
    assert counts[0] == 507 and sum(k * n for k, n in counts.items()) == 331      # 274 slices hold 331 boxes
    assert len({s.group for s in result.samples}) == 24
