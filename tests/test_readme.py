"""The README's task files and CSV are real: they load, read data and name every key there is."""
import re

import numpy as np
import pytest
import yaml

from model.readers import READERS, read_dataset
from model.synthetic import fake_ultrasound, save_image
from model.task import OUTPUT_KEYS, TASK_KEYS, task_from_dict
from model.training.config import build_config
from tests.helpers import PROJECT

README = (PROJECT / "README.md").read_text(encoding="utf-8")


def task_blocks() -> list[dict]:
    return [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", README, re.S) if "kind:" in block]


def block(name: str) -> dict:
    return next(raw for raw in task_blocks() if raw["name"] == name)


def test_every_task_file_in_the_readme_loads_and_trains_with_its_keys():
    tasks = [task_from_dict(raw, "README") for raw in task_blocks()]
    assert [t.name for t in tasks] == ["lesion", "lesion-birads", "ct-findings", "ct-haemorrhage", "haemorrhage",
                                       "bccd"]
    named = {t.name: t for t in tasks}
    assert named["haemorrhage"].kind.name == "segmentation" and build_config(named["haemorrhage"]).img_size == 256
    assert build_config(tasks[0]).epochs == 20          # its train: section is a real recipe key
    assert named["bccd"].kind.name == "detection" and named["bccd"].output.values == "boxes"
    bccd = build_config(named["bccd"])
    assert (bccd.architecture, bccd.img_size) == ("fcos", 512)
    assert named["ct-haemorrhage"].kind.name == "single-label"


def test_the_complete_example_has_every_task_and_output_key_and_every_reader_is_documented():
    full, segmentation, detection = task_blocks()[0], block("haemorrhage"), block("bccd")
    assert set(full) | {"labels"} == set(TASK_KEYS)     # labels: is the multi-label form of classes:
    assert set(full["output"]) == set(OUTPUT_KEYS) - {"rle_order"}      # rle_order: segmentation only
    assert set(segmentation) == set(TASK_KEYS) - {"labels", "positive"}
    assert set(segmentation["output"]) == set(OUTPUT_KEYS)
    assert set(detection) == set(TASK_KEYS) - {"labels", "positive"}
    assert set(detection["output"]) == set(OUTPUT_KEYS) - {"rle_order"}
    for name, reader in READERS.items():
        assert f"`{name}`" in README
        assert all(f"`{option}`" in README for option in reader.options), name


def test_the_readme_csv_reads_with_the_readme_task_file(tmp_path):
    csv_text = re.search(r"```text\n(path,diagnosis.*?)```", README, re.S)[1]
    (tmp_path / "lesions.csv").write_text(csv_text)
    for i, line in enumerate(csv_text.splitlines()[1:]):
        save_image(tmp_path / line.split(",")[0], fake_ultrasound(i, (300, 300)))
    _, result = read_dataset(task_from_dict(task_blocks()[0], "README"), tmp_path)
    assert not result.problems
    assert [s.labels for s in result.samples] == [(1,), (1,), (0,)]
    assert [s.group for s in result.samples] == ["P017", "P017", "P018"]
    assert [len(s.boxes) for s in result.samples] == [1, 0, 1]
    np.testing.assert_allclose(result.samples[0].boxes[0][2:], [140 / 300, 110 / 300])


def test_the_readme_segmentation_task_reads_its_layout(tmp_path):
    from model.synthetic import fake_scan
    task = task_from_dict(block("haemorrhage"), "README")
    for patient in ("P1", "P2"):
        for k in range(2):
            image, mask = fake_scan(k, (64, 64), lesion=k == 0)
            save_image(tmp_path / "images" / f"{patient}_{k}.png", image)
            save_image(tmp_path / "masks" / f"{patient}_{k}.png", mask)
    _, result = read_dataset(task, tmp_path)
    assert not result.problems
    assert [(s.group, s.labels) for s in result.samples] == [("P1", (1,)), ("P1", (0,)), ("P2", (1,)), ("P2", (0,))]


def write_voc(folder, stem: str, objects, size=(64, 48), xml: bool = True):
    """One image of ``size`` (width, height) in the VOC layout, with its XML listing ``objects``."""
    save_image(folder / "JPEGImages" / f"{stem}.png", fake_ultrasound(len(stem), size[::-1]))
    if xml:
        boxes = "".join(f"<object><name>{c}</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax>"
                        f"<ymax>{y2}</ymax></bndbox></object>" for c, x1, y1, x2, y2 in objects)
        (folder / "Annotations").mkdir(parents=True, exist_ok=True)
        (folder / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height></size>{boxes}</annotation>")


def test_the_readme_detection_task_reads_a_voc_folder(tmp_path):
    task = task_from_dict(block("bccd"), "README")
    write_voc(tmp_path, "BloodImage_00001", [("RBC", 2, 3, 20, 30), ("Platelets", 40, 10, 50, 20)])
    write_voc(tmp_path, "BloodImage_00002", [("WBC", 10, 10, 30, 40), ("RBC", 5, 5, 5, 9)])  # zero width
    _, result = read_dataset(task, tmp_path)
    assert not result.problems and len(result.dropped) == 1
    assert [[o[0] for o in s.objects] for s in result.samples] == [[0, 2], [1]]
    assert result.samples[0].objects[0][1:] == (2, 3, 20, 30)


def test_the_readme_haemorrhage_or_not_task_reads_boxes_as_classes(tmp_path):
    task = task_from_dict(block("ct-haemorrhage"), "README")
    write_voc(tmp_path, "P1_0", [("haemorrhage", 5, 5, 20, 20)])
    write_voc(tmp_path, "P1_1", [])
    write_voc(tmp_path, "P2_0", [], xml=False)           # missing_xml: empty
    _, result = read_dataset(task, tmp_path)
    assert not result.problems
    assert [(s.group, s.labels) for s in result.samples] == [("P1", (1,)), ("P1", (0,)), ("P2", (0,))]


def test_the_readme_counts_of_bccd_are_what_the_voc_reader_reads():
    data = PROJECT.parent / "shared" / "data" / "bccd"
    if not data.is_dir():
        pytest.skip(f"{data} is absent")
    _, result = read_dataset(task_from_dict(block("bccd"), "README"), data)
    counts = np.bincount([o[0] for s in result.samples for o in s.objects], minlength=3)
    assert (len(result.samples), counts.sum(), len(result.dropped)) == (292, 3941, 2)
    assert list(counts) == [3348, 301, 292]
    quoted = "292 images, 3,943 boxes in the files, 3,941 kept (RBC 3,348, WBC 301, Platelets 292)"
    assert quoted in " ".join(README.split())
