"""Hostile inputs: a broken bundle never costs another its CSV, no silent wrong result, and every mistake a
one-line message that names the file and says what to do."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import run
from model.cli import guarded
from model.images import ImageReadError, load_rgb
from model.kinds import MULTI_LABEL
from model.metric import UNKNOWN
from model.readers import DatasetError, Sample
from model.score import ScoreError, score_folder
from model.task import TaskFileError, load_task, task_from_dict
from model.training.cli import main as train_main
from model.training.folds import FoldsMismatchError, load_or_make_folds
from tests.helpers import CLA_TASK, fake_ultrasound, generic_task, make_bundle, make_test_folder, save_image, write_task


def run_main(weights, test_dir, out):
    return run.main(["--weights", str(weights), "--test-dir", str(test_dir), "--out-dir", str(out), "--quiet"])


def _sound_and_broken(tmp_path):
    """A weights folder with a sound bundle zz and a bundle aa (to be broken) that runs first."""
    zz = generic_task("zz", test_folder="cla", output={"file": "zz_pre.csv"})
    aa = generic_task("aa", test_folder="cla", output={"file": "aa_pre.csv"})
    make_bundle(tmp_path / "w" / "zz", zz)
    make_bundle(tmp_path / "w" / "aa", aa)
    return tmp_path / "w" / "aa"


@pytest.mark.parametrize("damage, message", [
    (lambda aa: (aa / "manifest.json").write_text("[" * 100_000), "nested too deeply"),
    (lambda aa: (aa / "manifest.json").write_text('{"format": ' + "9" * 5001 + "}"), "not valid UTF-8 JSON"),
    (lambda aa: (aa / "manifest.json").write_bytes(b" " * (2 << 20)), "more than a manifest holds"),
])
def test_a_manifest_that_cannot_be_parsed_costs_only_its_own_bundle(tmp_path, capsys, damage, message):
    damage(_sound_and_broken(tmp_path))
    test_dir = make_test_folder(tmp_path / "testB", n=2)
    assert run_main(tmp_path / "w", test_dir, tmp_path / "out") == 1
    assert len(pd.read_csv(tmp_path / "out/zz_pre.csv")) == 2
    assert message in capsys.readouterr().err
    assert run.main(["--weights", str(tmp_path / "w"), "--test-dir", str(test_dir), "--out-dir", str(tmp_path / "o2"),
                     "--tasks", "zz", "--quiet"]) == 0


def test_an_unreadable_manifest_costs_only_its_own_bundle(tmp_path, capsys, monkeypatch):
    aa = _sound_and_broken(tmp_path)
    real = Path.read_bytes

    def refuse(path):  # mode 000 as a user other than root; the test runs as root in CI
        if path == aa / "manifest.json":
            raise PermissionError(13, "Permission denied")
        return real(path)
    monkeypatch.setattr(Path, "read_bytes", refuse)
    assert run_main(tmp_path / "w", make_test_folder(tmp_path / "testB", n=2), tmp_path / "out") == 1
    assert "cannot read the manifest (Permission denied)" in capsys.readouterr().err
    assert len(pd.read_csv(tmp_path / "out/zz_pre.csv")) == 2


def test_a_broken_bundle_that_claims_anothers_output_claims_nothing(tmp_path, capsys):
    aa = _sound_and_broken(tmp_path)
    manifest = json.loads((aa / "manifest.json").read_text())
    manifest["task"]["output"]["file"] = "zz_pre.csv"
    (aa / "manifest.json").write_text(json.dumps(manifest))
    (aa / "fold0.pt").write_bytes(b"corrupt")
    assert run_main(tmp_path / "w", make_test_folder(tmp_path / "testB", n=2), tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "fold0.pt: sha256" in err and "skipped" not in err
    assert len(pd.read_csv(tmp_path / "out/zz_pre.csv")) == 2


def test_a_mistyped_weights_folder_is_a_usage_error(tmp_path, capsys):
    test_dir = make_test_folder(tmp_path / "testB", n=1)
    with pytest.raises(SystemExit) as exit_info:
        run_main(tmp_path / "no-such-weights", test_dir, tmp_path / "out")
    assert exit_info.value.code == 2 and "--weights" in capsys.readouterr().err


@pytest.mark.parametrize("text, message", [
    ("name: x\nkind: single-label\nclasses: [null, [a, b], 3.5]\n", r"each name must be a string"),
    ("name: x\nkind: single-label\nclasses: [a, b]\noutput: {id: [x]}\n", r"output.id \['x'\]: number"),
    ("name: x\nkind: single-label\nclasses: [a, b]\ndata: {reeder: csv}\n", r"reader: required.*did you mean 'reader'"),
    ("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
     "d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n"
     "f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\nclasses: [*f, *f, *f, *f, *f, *f, *f, *f, *f]\n",
     r"expands to more than"),
    ("x: " + "[" * 5000 + "]" * 5000 + "\n", r"nested"),
])
def test_a_hostile_task_file_is_refused_with_bounded_work_and_its_reason(tmp_path, monkeypatch, text, message):
    # The bound is on the work done, not on seconds (a wall clock fails on a busy machine): the file is
    # refused before yaml constructs a value, and the expansion count visits at most the bound's nodes.
    import sys
    import yaml
    from model import task as task_module
    if message in (r"expands to more than", r"nested"):
        monkeypatch.setattr(yaml, "safe_load", lambda *a, **k: pytest.fail("a hostile file reached safe_load"))
    calls = []
    path = write_task(tmp_path / "task.yaml", text)
    sys.setprofile(lambda frame, event, arg: calls.append(1) if event == "call" and
                   frame.f_code.co_name == "expanded" else None)
    try:
        with pytest.raises(TaskFileError, match=message):
            load_task(path)
    finally:
        sys.setprofile(None)
    assert len(calls) <= task_module.MAX_YAML_NODES + task_module.MAX_YAML_DEPTH


def test_a_task_file_over_the_size_bound_is_refused_before_it_is_read(tmp_path, monkeypatch):
    import yaml
    from model import task as task_module
    path = write_task(tmp_path / "task.yaml", "name: x\n" + "#" * task_module.MAX_TASK_BYTES)
    monkeypatch.setattr(yaml, "compose", lambda *a, **k: pytest.fail("an oversized file was parsed"))
    monkeypatch.setattr(Path, "read_text", lambda *a, **k: pytest.fail("an oversized file was read"))
    with pytest.raises(TaskFileError, match=rf"bytes; a task file holds at most {task_module.MAX_TASK_BYTES}"):
        load_task(path)


def test_a_yaml_tag_is_a_users_error_naming_the_file_and_the_tag(tmp_path):
    path = write_task(tmp_path / "task.yaml", "name: x\nkind: !!python/object/apply:os.system [echo hi]\n")
    with pytest.raises(TaskFileError) as e:
        load_task(path)
    assert str(path) in str(e.value) and "python/object/apply:os.system" in str(e.value) and "not allowed" in str(e.value)


def test_a_nan_box_is_a_problem_not_the_whole_image(tmp_path):
    from model.readers import read_dataset
    save_image(tmp_path / "a.png", fake_ultrasound(0, (64, 64)))
    save_image(tmp_path / "b.png", fake_ultrasound(1, (64, 64)))
    (tmp_path / "train.csv").write_text("image,label,x0,y0,x1,y1\na.png,a,nan,nan,nan,nan\nb.png,b,1,1,inf,9\n")
    task = generic_task("boxes", heads=("a", "b"), data={"reader": "csv", "box_columns": ["x0", "y0", "x1", "y1"]})
    _, result = read_dataset(task, tmp_path)
    assert len(result.problems) == 2 and all("is not four numbers" in p for p in result.problems)


def test_a_class_without_training_images_is_an_error_that_says_what_to_do(tmp_path):
    from model.training.config import build_config
    from model.training.experiment import train
    for i in range(6):
        save_image(tmp_path / "data" / f"{i}.png", fake_ultrasound(i, (64, 64)))
    (tmp_path / "data" / "train.csv").write_text("image,label\n" + "".join(f"{i}.png,a\n" for i in range(6)))
    task = generic_task("three", heads=("a", "b", "c"), data={"reader": "csv"})
    cfg = build_config(task, overrides={"data": str(tmp_path / "data"), "out": str(tmp_path / "run"),
                                        "folds_dir": str(tmp_path / "folds")})
    with pytest.raises(DatasetError, match=r"classes 'b', 'c' of three have no training image.*allow_missing_classes"):
        train(task, cfg)
    assert not (tmp_path / "run").exists()


def test_an_image_that_cannot_be_decoded_is_named_without_a_buffer(tmp_path):
    (tmp_path / "x.png").write_bytes(b"garbage")
    with pytest.raises(ImageReadError) as error:
        load_rgb(tmp_path / "x.png")
    assert str(tmp_path / "x.png") in str(error.value) and "BytesIO" not in str(error.value)


def test_scores_with_no_matching_id_are_an_error_and_the_order_file_is_named_after_the_task(tmp_path):
    task = generic_task("lesion", heads=("benign", "malignant"), output={"file": "lesion.csv", "id": "filename"})
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt/lesion_gt.csv").write_text("id,label\n1,0\n2,1\n")
    (tmp_path / "gt/lesion_order.csv").write_text("id,image_name\n1,benign (201).jpg\n2,malignant (3).jpg\n")
    (tmp_path / "pred/lesion.csv").write_text("img_name,label\nbenign (201).jpg,0\nmalignant (3).jpg,1\n")
    assert score_folder(tmp_path / "pred", tmp_path / "gt", [task])["lesion"]["scores"]["accuracy"] == 1.0
    (tmp_path / "pred/lesion.csv").write_text("img_name,label\nother 1.jpg,0\nother 2.jpg,1\n")
    with pytest.raises(ScoreError, match="not one of its 2 rows matches an id"):
        score_folder(tmp_path / "pred", tmp_path / "gt", [task])


def test_a_corrupt_resume_state_says_which_file_to_delete(tmp_path):
    from model.training.engine import ResumeError, read_resume_state
    (tmp_path / "last.pt").write_bytes(b"\x00" * 10)
    with pytest.raises(ResumeError, match=r"last.pt: cannot resume from this file .* Delete it"):
        read_resume_state(tmp_path / "last.pt", None, torch.device("cpu"))
    torch.save({"state": {"epoch": 1}, "code": Path("x")}, tmp_path / "last.pt")   # a pickled object: refused
    with pytest.raises(ResumeError, match="Delete it"):
        read_resume_state(tmp_path / "last.pt", None, torch.device("cpu"))


def test_a_run_folders_broken_config_is_a_message(tmp_path):
    from model.training.config import read_config
    (tmp_path / "config.yaml").write_text("lr: [unclosed\n")
    with pytest.raises(ValueError, match="config.yaml: this run's config cannot be used"):
        read_config(tmp_path / "config.yaml", CLA_TASK.kind)
    (tmp_path / "config.yaml").write_text("learning_rate: 0.1\n")
    with pytest.raises(ValueError, match="unknown config key 'learning_rate'"):
        read_config(tmp_path / "config.yaml", CLA_TASK.kind)


def test_a_diverged_run_is_the_users_to_fix_not_a_bug(capsys):
    def diverge(argv):
        raise FloatingPointError("fold 0, epoch 3: loss is nan; lower lr or use fp32")
    assert guarded(diverge, []) == 2
    assert "lower lr" in capsys.readouterr().err


# Behaviour that a deliberate change once broke without any test noticing.

def test_the_fine_tuning_verdict_is_printed_with_what_to_do(tmp_path, capsys, monkeypatch):
    metrics = {"oof_default_rule": {"score": 0.5}, "oof_tuned_rule": {"score": 0.5}, "folds_done": [0, 1],
               "folds_missing": [], "rule_report": {"adopted": False, "why": "the neutral rule is already the best"},
               "probe": {"oof_tuned_rule": 0.6}, "gain_over_probe": -0.1}
    monkeypatch.setattr("model.training.experiment.train", lambda task, cfg: metrics)
    assert train_main(["--task", str(CLA_TASK.source), "--data", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "0.5000 with the neutral rule, kept" in out and "->" not in out
    assert "FINE-TUNING DID NOT PAY: train the probe as the model" in out and "--set recipe=probe" in out


def test_a_binary_tasks_positive_class_is_the_one_reported():
    task = generic_task("lesion", heads=("malignant", "benign"), positive="malignant")
    labels = np.array([0, 0, 1, 1, 1])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6], [0.6, 0.4]])
    details = task.kind.details(task, labels, task.decide(probs), probs)["binary"]
    assert details["positive"] == "malignant"   # with benign as the positive class: 2/3 and 1.0
    assert details["sensitivity"] == 1.0 and details["specificity"] == pytest.approx(2 / 3)


def test_the_folds_file_notices_removed_images(tmp_path):
    task = generic_task("lesion")
    samples = [Sample(Path(f"{i}.png"), f"{i}.png", (i % 2,)) for i in range(10)]
    hashes = [f"h{i}" for i in range(10)]
    load_or_make_folds(task, samples, hashes, "set", 2, 0, tmp_path)
    with pytest.raises(FoldsMismatchError, match=r"removed: 1 \(9.png\)"):
        load_or_make_folds(task, samples[:9], hashes[:9], "set", 2, 0, tmp_path)


def test_a_multi_label_prior_leaves_unknown_labels_out():
    labels = np.array([[1, UNKNOWN], [UNKNOWN, 0], [0, UNKNOWN], [1, UNKNOWN]])
    assert MULTI_LABEL.prior(labels, 2) == [pytest.approx(2 / 3), 0.0]
    assert task_from_dict({"name": "x", "kind": "multi-label", "labels": ["a", "b"]}, "<t>").kind is MULTI_LABEL


def test_training_outputs_stay_out_of_git_status():
    import subprocess
    project = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None or not (project / ".git").exists():
        pytest.skip("not a git checkout")
    for path in ("runs/busi-busi/oof.csv", "folds/newset/busi_folds.csv", "cla_pre.csv", "lgg_masks/0001.png",
                 "cla_pre.csv.stale", "submissions/cv_vs_lb.png"):
        assert subprocess.run(["git", "check-ignore", "-q", path], cwd=project).returncode == 0, path
    assert subprocess.run(["git", "check-ignore", "-q", "model/masks.py"], cwd=project).returncode == 1


def test_weights_that_do_not_fit_the_manifests_network_are_a_message(tmp_path, capsys):
    from model.checkpoint import load_checkpoint, save_checkpoint
    from model.manifest import MANIFEST, sha256
    from model.network import create_network
    folder = make_bundle(tmp_path / "w" / "cla", "cla")
    ckpt = load_checkpoint(folder / "fold0.pt")
    other = create_network("test_vit", len(ckpt["heads"]))                   # another network, same heads
    save_checkpoint(folder / "fold0.pt", other, {k: v for k, v in ckpt.items() if k not in ("format", "state_dict")})
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["folds"][0]["sha256"] = sha256(folder / "fold0.pt")
    manifest.pop("onnx", None)
    (folder / MANIFEST).write_text(json.dumps(manifest))
    test_dir = make_test_folder(tmp_path / "testB", n=1)
    for backend in ("auto", "torch"):
        assert run.main(["--weights", str(tmp_path / "w"), "--test-dir", str(test_dir), "--out-dir",
                         str(tmp_path / backend), "--backend", backend, "--quiet"]) == 1
        err = capsys.readouterr().err
        assert "fold0.pt: its weights do not fit the network the manifest describes" in err, err
        assert "unexpected" not in err and "broadcast" not in err


def test_a_training_image_name_that_is_not_utf8_is_named(tmp_path):
    import os
    from model.training.config import build_config
    from model.training.experiment import train
    data = tmp_path / "data"
    for name in ("a", "b"):
        for i in range(3):
            save_image(data / name / f"{i}.png", fake_ultrasound(i, (64, 64)))
    bad = os.fsencode(str(data / "a")) + b"/scan\xff.png"
    with open(bad, "wb") as f:
        f.write((data / "a" / "0.png").read_bytes())
    task = generic_task("names", heads=("a", "b"), data={"reader": "class-folders"})
    cfg = build_config(task, overrides={"data": str(data), "out": str(tmp_path / "run"),
                                        "folds_dir": str(tmp_path / "folds")})
    with pytest.raises(DatasetError, match=r"scan\\xff.png: file name is not valid UTF-8; rename it"):
        train(task, cfg)


@pytest.mark.parametrize("replace", [False, True])
def test_export_never_moves_a_folder_that_holds_no_bundle_even_with_force(tmp_path, replace):
    from model.errors import BundleError
    from model.export import export_bundle
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(BundleError, match="holds no bundle \\(no manifest.json\\); it is not replaced, even with --force"):
        export_bundle(tmp_path / "out", [], {}, replace=replace, backups=tmp_path / "backups")
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine" and not (tmp_path / "backups").exists()
