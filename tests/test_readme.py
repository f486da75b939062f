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
    assert [t.name for t in tasks] == ["lesion", "lesion-birads", "ct-findings"]
    assert build_config(tasks[0]).epochs == 20          # its train: section is a real recipe key


def test_the_complete_example_has_every_task_and_output_key_and_every_reader_is_documented():
    full = task_blocks()[0]
    assert set(full) | {"labels"} == set(TASK_KEYS)     # labels: is the multi-label form of classes:
    assert set(full["output"]) == set(OUTPUT_KEYS)
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
