"""A new kind is its module, its registration and its search space, and nothing else: a toy kind registered
from this test trains, exports, predicts and is scored through the public commands; a kind that lacks a
method of the interface fails when it is registered."""
from __future__ import annotations

import pandas as pd
import pytest

import run
from model.kinds.base import Kind
from model.kinds.classification import SingleLabel
from model.registry import kinds, register, unregister
from model.score import main as score_main
from model.synthetic import fake_ultrasound, save_image
from model.training.cli import main as train_main
from tests.helpers import write_task

TINY = ["--set", "backbone=test_efficientnet", "--set", "pretrained=none", "--img-size", "32", "--workers", "0",
        "--set", "n_folds=2", "--set", "checkpoint_every=0", "--set", "ema_decay=0", "--epochs", "1"]


class Presence(SingleLabel):
    """A toy kind: a single-label task scored by accuracy alone, with a recipe key of its own."""

    name = "toy-presence"
    metrics = ("accuracy",)
    default_metric = "accuracy"
    recipe_keys = SingleLabel.recipe_keys | {"soft_f1_weight"}   # a key another kind (multi-label) claims


@pytest.fixture
def toy_kind():
    register(Presence)
    yield kinds()["toy-presence"]
    unregister("toy-presence")


def test_a_kind_that_lacks_a_method_fails_when_it_is_registered():
    class Half(Kind):
        name = "half"

        def output_columns(self, heads, values):
            return ["label"]

    with pytest.raises(TypeError, match="abstract"):
        register(Half)
    assert "half" not in kinds()


def test_a_toy_kind_trains_exports_predicts_and_is_scored_through_the_public_commands(tmp_path, toy_kind, capsys):
    for label, name in enumerate(("absent", "present")):
        for i in range(6):
            save_image(tmp_path / "data" / name / f"{name}{i}.png", fake_ultrasound(i + 10 * label, (48, 48), label))
    task = write_task(tmp_path / "toy.yaml", "name: toy\nkind: toy-presence\nclasses: [absent, present]\n"
                                             "data: {reader: class-folders}\ntest_folder: toy\n")
    common = ["--task", str(task), "--data", str(tmp_path / "data"), "--set", f"folds_dir={tmp_path / 'folds'}"]
    # Its recipe keys come from the kind: its own claim is accepted, another kind's key is refused.
    assert train_main([*common, "--set", "soft_f1_weight=0.1", "--show-config"]) == 0
    assert "soft_f1_weight: 0.1" in capsys.readouterr().out
    assert train_main([*common, "--set", "dice_weight=0.5", "--show-config"]) == 2
    assert "is for segmentation tasks; this task is toy-presence" in capsys.readouterr().err

    assert train_main([*common, "--out", str(tmp_path / "run"), *TINY]) == 0
    assert train_main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "weights" / "toy")]) == 0
    for i in range(1, 4):
        save_image(tmp_path / "test" / "toy" / f"{i}.png", fake_ultrasound(100 + i, (48, 48), i % 2))
    assert run.main(["--weights", str(tmp_path / "weights"), "--test-dir", str(tmp_path / "test"),
                     "--out-dir", str(tmp_path / "out"), "--quiet", "--workers", "0"]) == 0
    written = pd.read_csv(tmp_path / "out" / "toy_pre.csv")
    assert list(written.columns) == ["id", "label"] and list(written["id"]) == [1, 2, 3]
    assert set(written["label"]) <= {0, 1}

    (tmp_path / "gt").mkdir()
    pd.DataFrame({"id": [1, 2, 3], "label": [1, 0, 1]}).to_csv(tmp_path / "gt" / "toy_gt.csv",
                                                                                      index=False)
    capsys.readouterr()
    assert score_main([str(tmp_path / "out"), str(tmp_path / "gt"), "--weights", str(tmp_path / "weights")]) == 0
    report = capsys.readouterr().out
    expected = (written["label"] == pd.Series([1, 0, 1])).mean()
    assert "toy" in report and f"{expected:.4f}" in report
