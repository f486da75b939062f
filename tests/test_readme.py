"""The README's task files and CSV are real: they load, read data and name every key there is."""
import re

import numpy as np
import yaml

from model.readers import READERS, read_dataset
from model.synthetic import fake_ultrasound, save_image
from model.task import OUTPUT_KEYS, TASK_KEYS, task_from_dict
from model.training.config import build_config
from tests.helpers import PROJECT

README = (PROJECT / "README.md").read_text(encoding="utf-8")


def task_blocks() -> list[dict]:
    return [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", README, re.S) if "kind:" in block]


def test_every_task_file_in_the_readme_loads_and_trains_with_its_keys():
    tasks = [task_from_dict(raw, "README") for raw in task_blocks()]
    assert [t.name for t in tasks] == ["lesion", "lesion-birads", "ct-findings", "haemorrhage"]
    assert tasks[3].kind.name == "segmentation" and build_config(tasks[3]).img_size == 256
    assert build_config(tasks[0]).epochs == 20          # its train: section is a real recipe key


def test_the_complete_example_has_every_task_and_output_key_and_every_reader_is_documented():
    full, segmentation = task_blocks()[0], task_blocks()[3]
    assert set(full) | {"labels"} == set(TASK_KEYS)     # labels: is the multi-label form of classes:
    assert set(full["output"]) == set(OUTPUT_KEYS) - {"rle_order"}      # rle_order: segmentation only
    assert set(segmentation) == set(TASK_KEYS) - {"labels", "positive"}
    assert set(segmentation["output"]) == set(OUTPUT_KEYS)
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
    task = task_from_dict(task_blocks()[3], "README")
    for patient in ("P1", "P2"):
        for k in range(2):
            image, mask = fake_scan(k, (64, 64), lesion=k == 0)
            save_image(tmp_path / "images" / f"{patient}_{k}.png", image)
            save_image(tmp_path / "masks" / f"{patient}_{k}.png", mask)
    _, result = read_dataset(task, tmp_path)
    assert not result.problems
    assert [(s.group, s.labels) for s in result.samples] == [("P1", (1,)), ("P1", (0,)), ("P2", (1,)), ("P2", (0,))]
