"""Tasks the project has never seen, described by task files alone, end to end through the command lines:
train (grouped folds), export, run.py, model.score."""
import json

import numpy as np
import pandas as pd
import pytest

import run
from model.cli import guarded
from model.score import main as score_main
from model.training.cli import main as train_main
from tests.helpers import fake_ultrasound, save_image, write_task

TINY = "train: {backbone: test_efficientnet, pretrained: none, img_size: 32, epochs: 1, batch_size: 8, workers: 0}\n"


def make_scans(root, n, seed=0):
    """``n`` scans of ``n // 3`` patients; a patient's scans share the grade (0..2) and the malignancy."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        patient = i // 3
        grade = patient % 3
        save_image(root / "scans" / f"scan {i}.png", fake_ultrasound(i, (64, 72), 2 * grade))
        calc = "" if rng.random() < 0.2 else str(int(rng.random() < 0.4))   # unknown for some scans
        rows.append(f"scans/scan {i}.png,{['low', 'mid', 'high'][grade]},{int(grade == 2)},P{patient:02d},{calc}")
    (root / "train.csv").write_text("image,grade,malignant,patient,calcified\n" + "\n".join(rows) + "\n")
    return root


GRADE = """\
name: grade
kind: single-label
classes: [low, mid, high]
data: {reader: csv, label_column: grade, group_column: patient}
output: {file: grade.csv}
"""
MALIGNANT = """\
name: malignancy
kind: single-label
classes: [benign, malignant]
positive: malignant
data: {reader: csv, label_column: malignant, class_values: ["0", "1"], group_column: patient}
output: {file: malignancy.csv}
metric: balanced_accuracy
"""
SUBTYPES = """\
name: subtypes
kind: multi-label
labels: [calcified, malignant]
data: {reader: csv, group_column: patient}
output: {file: subtypes.csv}
"""


@pytest.mark.slow
def test_a_new_csv_task_trains_grouped_folds_exports_predicts_and_scores(tmp_path):
    data = make_scans(tmp_path / "data", 45)
    task = write_task(tmp_path / "grade.yaml", GRADE + TINY)
    run_dir, weights = tmp_path / "runs/grade", tmp_path / "weights"
    assert train_main(["--task", str(task), "--data", str(data), "--out", str(run_dir),
                       "--set", f"folds_dir={tmp_path / 'folds'}"]) == 0
    samples = pd.read_csv(run_dir / "samples.csv")
    patients = samples["key"].str.extract(r"scan (\d+)")[0].astype(int) // 3
    assert sorted(samples["fold"].unique()) == [0, 1, 2, 3, 4]
    assert samples.groupby(patients)["fold"].nunique().max() == 1  # no patient in two folds
    assert train_main(["export", str(run_dir), "--out", str(weights / "grade")]) == 0

    test_dir = tmp_path / "test"
    for i in range(6):
        save_image(test_dir / f"{i + 1}.png", fake_ultrasound(100 + i, (64, 72), 2 * (i % 3)))
    assert run.main(["--weights", str(weights), "--test-dir", str(test_dir), "--out-dir", str(tmp_path / "out"),
                     "--quiet", "--workers", "0"]) == 0
    predicted = pd.read_csv(tmp_path / "out/grade.csv")
    assert list(predicted.columns) == ["id", "label"] and predicted["id"].tolist() == [1, 2, 3, 4, 5, 6]
    gt = tmp_path / "gt"
    gt.mkdir()
    (gt / "grade_gt.csv").write_text("id,label\n" + "".join(f"{i + 1},{i % 3}\n" for i in range(6)))
    assert score_main([str(tmp_path / "out"), str(gt), "--weights", str(weights), "--json", str(tmp_path / "s.json")]) == 0
    report = json.loads((tmp_path / "s.json").read_text())
    assert report["grade"]["problems"] == [] and 0 <= report["grade"]["scores"]["score"] <= 1


@pytest.mark.slow
def test_two_tasks_over_one_csv_and_a_multi_label_task_with_unknowns(tmp_path, capsys):
    data = make_scans(tmp_path / "data", 30)
    weights = tmp_path / "weights"
    for name, text in (("malignancy", MALIGNANT), ("subtypes", SUBTYPES)):
        task = write_task(tmp_path / f"{name}.yaml", text + TINY.replace("epochs: 1", "epochs: 1, n_folds: 3"))
        assert train_main(["--task", str(task), "--data", str(data / "train.csv"), "--out", str(tmp_path / name),
                           "--set", f"folds_dir={tmp_path / 'folds'}"]) == 0
        assert train_main(["export", str(tmp_path / name), "--out", str(weights / name)]) == 0
    metrics = json.loads((tmp_path / "malignancy/metrics.json").read_text())
    binary = metrics["oof_default_rule"]["binary"]
    assert binary["positive"] == "malignant" and {"auc", "sensitivity", "specificity"} <= set(binary)
    assert metrics["metric"] == "balanced_accuracy"
    subtypes = json.loads((tmp_path / "subtypes/metrics.json").read_text())
    known = subtypes["oof_default_rule"]["per_label"]["calcified"]["known"]
    assert known == sum(1 for line in (data / "train.csv").read_text().splitlines()[1:] if not line.endswith(","))
    for i in range(4):
        save_image(tmp_path / "test" / f"{i + 1}.png", fake_ultrasound(200 + i, (64, 72), i))
    assert run.main(["--weights", str(weights), "--test-dir", str(tmp_path / "test"), "--out-dir",
                     str(tmp_path / "out"), "--quiet", "--workers", "0"]) == 0
    assert list(pd.read_csv(tmp_path / "out/malignancy.csv").columns) == ["id", "label"]
    assert list(pd.read_csv(tmp_path / "out/subtypes.csv").columns) == ["id", "calcified", "malignant"]
    out = capsys.readouterr().out
    assert "malignancy: 4 images" in out and "subtypes: 4 images" in out


def test_a_task_file_error_is_a_message_naming_the_file(tmp_path, capsys):
    task = write_task(tmp_path / "bad.yaml", GRADE.replace("group_column", "grop_column"))
    assert guarded(train_main, ["--task", str(task), "--show-config"]) == 2
    err = capsys.readouterr().err
    assert f"{task}: data: reader csv: unknown key 'grop_column'; did you mean 'group_column'?" in err
    assert "Traceback" not in err


def test_a_missing_task_file_is_a_message(capsys):
    assert guarded(train_main, ["--task", "missing.yaml", "--show-config"]) == 2
    assert "missing.yaml: task file not found" in capsys.readouterr().err


def test_the_generic_trainer_needs_a_task_file(capsys):
    with pytest.raises(SystemExit):
        train_main(["--show-config"])
    assert "the following arguments are required: --task" in capsys.readouterr().err
