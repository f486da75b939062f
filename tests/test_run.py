import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import run
from model.bundle import load_bundle
from model.ensemble import make_tta
from model.manifest import sha256
from model.predict import list_test_images, predict_paths
from tests.helpers import FEA_TASK, fake_ultrasound, generic_task, make_bundle, make_test_folder, save_image

PROJECT = Path(__file__).resolve().parents[1]


def run_main(weights, test_dir, out_dir, *extra):
    return run.main(["--weights", str(weights), "--test-dir", str(test_dir), "--out-dir", str(out_dir),
                     "--quiet", "--workers", "0", *extra])


def run_cli(weights, test_dir, out_dir, *extra) -> int:
    """run.py's exit code as the shell sees it (argparse's usage errors exit through SystemExit)."""
    try:
        return run.cli(["--weights", str(weights), "--test-dir", str(test_dir), "--out-dir", str(out_dir),
                        "--quiet", "--workers", "0", *extra])
    except SystemExit as e:
        return e.code


def test_run_writes_both_csvs_in_id_order(tmp_path, weights):
    test_dir = make_test_folder(tmp_path / "testB", n=12)
    assert run_main(weights, test_dir, tmp_path / "out") == 0
    cla = pd.read_csv(tmp_path / "out/cla_pre.csv")
    fea = pd.read_csv(tmp_path / "out/fea_pre.csv")
    assert list(cla.columns) == ["id", "label"] and cla["id"].tolist() == list(range(1, 13))
    assert cla["label"].between(0, 5).all()
    assert list(fea.columns) == ["id", "boundary", "calcification", "direction", "shape"]
    assert fea.iloc[:, 1:].isin([0, 1]).all().all() and len(fea) == 12
    mode = (tmp_path / "out/cla_pre.csv").stat().st_mode
    assert mode & 0o044 == 0o044  # the organiser's tools, run as another user, can read them


def test_ids_follow_the_number_in_the_name_not_the_text(tmp_path, weights):
    for name in ("10.png", "9.png", "2.png", "100.png", "1.png"):
        save_image(tmp_path / "testB/cla" / name, fake_ultrasound(int(name[:-4])))
    assert list_test_images(tmp_path / "testB/cla").images[0].id == 1
    assert run_main(weights, tmp_path / "testB", tmp_path / "out", "--tasks", "cla") == 0
    assert pd.read_csv(tmp_path / "out/cla_pre.csv")["id"].tolist() == [1, 2, 9, 10, 100]


def test_img_name_column_and_byte_identical_reruns(tmp_path, weights):
    test_dir = make_test_folder(tmp_path / "testB", n=6)
    run_main(weights, test_dir, tmp_path / "a", "--id-column", "img_name")
    run_main(weights, test_dir, tmp_path / "b", "--id-column", "img_name", "--batch-size", "4")
    first = (tmp_path / "a/cla_pre.csv").read_bytes()
    assert first == (tmp_path / "b/cla_pre.csv").read_bytes()
    assert (tmp_path / "a/fea_pre.csv").read_bytes() == (tmp_path / "b/fea_pre.csv").read_bytes()
    names = pd.read_csv(tmp_path / "a/cla_pre.csv")["img_name"].tolist()
    assert names == sorted(p.name for p in (test_dir / "cla").iterdir())


def test_decision_rule_from_the_manifest_is_applied(tmp_path):
    make_bundle(tmp_path / "w/cla", "cla", rule={"logit_offsets": [0, 0, 0, 0, 50.0, 0]})
    make_bundle(tmp_path / "w/fea", "fea", rule={"thresholds": [0.0, 1.01, 0.0, 1.01]})
    test_dir = make_test_folder(tmp_path / "testB", n=4)
    assert run_main(tmp_path / "w", test_dir, tmp_path / "out") == 0
    assert set(pd.read_csv(tmp_path / "out/cla_pre.csv")["label"]) == {4}
    fea = pd.read_csv(tmp_path / "out/fea_pre.csv")
    assert fea["boundary"].eq(1).all() and fea["calcification"].eq(0).all()


def test_bad_inputs_are_reported_and_every_image_gets_a_row(tmp_path, weights, capsys):
    test_dir = make_test_folder(tmp_path / "testB", n=3)
    cla = test_dir / "cla"
    (cla / "0004.png").write_bytes(b"garbage")                        # undecodable
    save_image(cla / "scan_x.jpg", fake_ultrasound(9))                # not a number
    save_image(cla / "0002.png", fake_ultrasound(8))                  # id 2 again (0002.bmp exists)
    (cla / "notes.txt").write_text("hello")                           # not an image
    (cla / ".DS_Store").write_bytes(b"\0")                            # hidden
    (cla / "Thumbs.db").write_bytes(b"\0")                            # system file
    (cla / "more").mkdir()                                            # a subfolder
    os.mkfifo(cla / "0009.png")                                       # a pipe named like an image: never opened
    shutil.rmtree(test_dir / "fea")                                   # a task folder absent
    assert run_main(weights, test_dir, tmp_path / "out") == 0
    err = capsys.readouterr().err
    frame = pd.read_csv(tmp_path / "out/cla_pre.csv")
    assert frame["id"].tolist() == [1, 2, 3, 4, 5, 6]
    assert f"{cla / '0004.png'}: cannot decode this image" in err and "predicted from the class prior" in err
    assert f"{cla / '0002.png'}: id already taken by another file; predicted with id 5" in err
    assert f"{cla / 'scan_x.jpg'}: name is not a number; predicted with id 6" in err
    assert f"{cla / 'notes.txt'}: not an image file" in err and f"{cla / '0009.png'}: not an image file" in err
    assert f"{cla / '.DS_Store'}: hidden or system file, ignored" in err and "Thumbs.db: hidden or system" in err
    assert f"{cla / 'more'}: a folder inside the test folder, ignored" in err
    assert f"{test_dir / 'fea'}: folder not found, so fea_pre.csv was not written" in err
    assert not (tmp_path / "out/fea_pre.csv").exists()


def test_an_undecodable_image_gets_the_bundles_prior(tmp_path):
    make_bundle(tmp_path / "w/fea", "fea", prior=[0.9, 0.1, 0.8, 0.2])
    (tmp_path / "testB/fea").mkdir(parents=True)
    (tmp_path / "testB/fea/0001.png").write_bytes(b"garbage")
    assert run_main(tmp_path / "w", tmp_path / "testB", tmp_path / "out") == 0
    assert pd.read_csv(tmp_path / "out/fea_pre.csv").iloc[0].tolist() == [1, 1, 0, 1, 0]


def test_a_file_name_that_is_not_utf8_still_gets_its_row(tmp_path, weights, capsys):
    folder = tmp_path / "testB/cla"
    save_image(folder / "0001.png", fake_ultrasound(1))
    bad = os.fsdecode(b"scan-\xff.png")
    save_image(folder / bad, fake_ultrasound(2))
    assert run_main(weights, tmp_path / "testB", tmp_path / "out", "--id-column", "img_name", "--tasks", "cla") == 0
    names = pd.read_csv(tmp_path / "out/cla_pre.csv")["img_name"].tolist()
    assert names == ["0001.png", "scan-\\xff.png"]
    assert "file name is not valid UTF-8; written as 'scan-\\\\xff.png'" in capsys.readouterr().err


def test_missing_test_folder_is_a_clear_error(tmp_path, weights, capsys):
    assert run_main(weights, tmp_path / "nowhere", tmp_path / "out") == 2
    assert f"test folder {tmp_path / 'nowhere'} not found" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "-1"], "argument --batch-size: -1 is below 0"),
    (["--tta", "foo"], "argument --tta: unknown TTA ['foo']"),
    (["--device", "cuda:7"], "device cuda:7 asked for"),
    (["--device", "gpu"], "device 'gpu': use auto, cpu, cuda or cuda:N"),
    (["--workers", "x"], "argument --workers: 'x' is not a whole number"),
    (["--tasks", "cls"], "--tasks cls: no such bundle"),
])
def test_bad_options_are_usage_errors_not_tracebacks(tmp_path, weights, capsys, args, message):
    test_dir = make_test_folder(tmp_path / "testB", n=1)
    assert run_cli(weights, test_dir, tmp_path / "out", *args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_an_unusable_out_dir_is_refused_before_any_prediction(tmp_path, weights, capsys, monkeypatch):
    test_dir = make_test_folder(tmp_path / "testB", n=1)
    (tmp_path / "file").write_text("x")
    assert run_cli(weights, test_dir, tmp_path / "file") == 2
    assert f"--out-dir {tmp_path / 'file'} is a file, not a folder" in capsys.readouterr().err
    import model.runner

    def never(*args, **kwargs):
        raise AssertionError("predicted although the out dir is unwritable")
    def unwritable(**kwargs):
        raise PermissionError(13, "Permission denied")  # what a read-only folder answers (root is never refused)
    monkeypatch.setattr(model.runner, "run", never)
    monkeypatch.setattr(run, "run", never)
    monkeypatch.setattr(run.tempfile, "NamedTemporaryFile", unwritable)
    assert run_cli(weights, test_dir, tmp_path / "ro") == 2
    assert "cannot write there (Permission denied)" in capsys.readouterr().err


def test_missing_bundle_fails_that_task_only(tmp_path, weights, capsys):
    shutil.copytree(weights / "fea", tmp_path / "w/fea")
    (tmp_path / "w/cla").mkdir()
    test_dir = make_test_folder(tmp_path / "testB", n=2)
    assert run_main(tmp_path / "w", test_dir, tmp_path / "out") == 1
    assert (tmp_path / "out/fea_pre.csv").is_file() and not (tmp_path / "out/cla_pre.csv").exists()
    assert "cla/manifest.json: no bundle here" in capsys.readouterr().err


@pytest.mark.parametrize("damage", [
    lambda m: m.write_bytes(b'{"format": "\xff"}'),
    lambda m: m.write_text("[]"),
    lambda m: m.write_text(json.dumps({**json.loads(m.read_text()), "folds": []})),
    lambda m: m.write_text(json.dumps({**json.loads(m.read_text()), "decision": {"logit_offsets": [0, 1]}})),
])
def test_a_broken_manifest_costs_only_its_own_csv(tmp_path, weights, capsys, damage):
    shutil.copytree(weights, tmp_path / "w")
    damage(tmp_path / "w/cla/manifest.json")
    test_dir = make_test_folder(tmp_path / "testB", n=2)
    (tmp_path / "out").mkdir()
    (tmp_path / "out/cla_pre.csv").write_text("id,label\n1,0\n")     # left by an earlier run
    assert run_main(tmp_path / "w", test_dir, tmp_path / "out") == 1
    assert len(pd.read_csv(tmp_path / "out/fea_pre.csv")) == 2
    assert not (tmp_path / "out/cla_pre.csv").exists() and (tmp_path / "out/cla_pre.csv.stale").is_file()
    err = capsys.readouterr().err
    assert "re-export the bundle" in err and "moved to cla_pre.csv.stale" in err and "Traceback" not in err


def test_swapped_bundle_folders_still_write_the_right_csvs(tmp_path, weights, capsys):
    shutil.copytree(weights / "cla", tmp_path / "w/fea")
    shutil.copytree(weights / "fea", tmp_path / "w/cla")
    test_dir = make_test_folder(tmp_path / "testB", n=3)
    assert run_main(tmp_path / "w", test_dir, tmp_path / "a") == 0
    assert run_main(weights, test_dir, tmp_path / "b") == 0
    for name in ("cla_pre.csv", "fea_pre.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert "problem" not in capsys.readouterr().err  # bundles describe themselves: a folder's name is no problem


def test_an_empty_task_folder_is_an_error_that_does_not_cost_the_other_task(tmp_path, weights, capsys):
    test_dir = make_test_folder(tmp_path / "testB", n=2)
    for path in (test_dir / "cla").iterdir():
        path.unlink()
    (tmp_path / "out").mkdir()
    (tmp_path / "out/cla_pre.csv").write_text("id,label\n1,0\n")     # left by an earlier run
    assert run_main(weights, test_dir, tmp_path / "out") == 1
    assert "no image files in the test folder, so cla_pre.csv was not written" in capsys.readouterr().err
    assert not (tmp_path / "out/cla_pre.csv").exists() and (tmp_path / "out/cla_pre.csv.stale").is_file()
    assert len(pd.read_csv(tmp_path / "out/fea_pre.csv")) == 2


def test_an_absent_task_folder_moves_its_old_csv_aside(tmp_path, weights, capsys):
    test_dir = make_test_folder(tmp_path / "testB", n=2)
    shutil.rmtree(test_dir / "cla")
    (tmp_path / "out").mkdir()
    (tmp_path / "out/cla_pre.csv").write_text("id,label\n1,0\n")     # yesterday's predictions
    assert run_main(weights, test_dir, tmp_path / "out") == 0
    err = capsys.readouterr().err
    assert "cla: folder not found, so cla_pre.csv was not written" in err and "moved to cla_pre.csv.stale" in err
    assert not (tmp_path / "out/cla_pre.csv").exists() and len(pd.read_csv(tmp_path / "out/fea_pre.csv")) == 2


def test_two_bundles_writing_one_output_keep_the_first_and_report_the_second(tmp_path, capsys):
    for name in ("a", "b"):
        make_bundle(tmp_path / "w" / name, generic_task(name, test_folder=".", output={"file": "same.csv"}))
    make_bundle(tmp_path / "w" / "c", generic_task("c", test_folder=".", output={"file": "c.csv"}))
    for i in (1, 2):
        save_image(tmp_path / "test" / f"{i:04d}.png", fake_ultrasound(i))
    assert run_main(tmp_path / "w", tmp_path / "test", tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'w' / 'b'}: writes same.csv like {tmp_path / 'w' / 'a'}; skipped" in err
    assert len(pd.read_csv(tmp_path / "out/same.csv")) == 2 and len(pd.read_csv(tmp_path / "out/c.csv")) == 2


def test_any_task_bundle_is_served_with_no_task_code(tmp_path):
    task = generic_task("tumour", heads=("benign", "malignant"), test_folder=".",
                        output={"file": "tumour.csv", "id": "filename", "values": "names"})
    make_bundle(tmp_path / "w/tumour", task, rule={"logit_offsets": [0.0, 30.0]})
    for name in ("b.png", "a 2.jpg", "a 10.jpg"):
        save_image(tmp_path / "test" / name, fake_ultrasound(len(name)))
    assert run_main(tmp_path / "w/tumour", tmp_path / "test", tmp_path / "out") == 0
    assert (tmp_path / "out/tumour.csv").read_text() == "img_name,label\na 2.jpg,malignant\na 10.jpg,malignant\nb.png,malignant\n"


@pytest.mark.slow
def test_default_paths_are_relative_to_the_project_not_the_cwd(tmp_path, weights):
    project = tmp_path / "submission"
    shutil.copytree(PROJECT / "model", project / "model", ignore=shutil.ignore_patterns("weights", "__pycache__"))
    shutil.copytree(weights, project / "model/weights")
    shutil.copy(PROJECT / "run.py", project / "run.py")
    make_test_folder(tmp_path / "testB", n=3)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run([sys.executable, str(project / "run.py"), "--quiet"], cwd=elsewhere,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (project / "cla_pre.csv").is_file() and (project / "fea_pre.csv").is_file()
    assert "done in" in result.stdout and "ms per image" in result.stdout
    assert not list(elsewhere.iterdir())


def test_speed_options_do_not_change_predictions(tmp_path, weights):
    test_dir = make_test_folder(tmp_path / "testB", n=6)
    paths = sorted((test_dir / "cla").iterdir())
    bundle = load_bundle(weights / "cla")
    base = predict_paths(bundle, paths, torch.device("cpu"), batch_size=6, tta=make_tta("hflip"), progress=False,
                         channels_last=False)
    for options in ({"channels_last": True}, {"batch_size": 1}, {"workers": 2, "batch_size": 4}):
        kwargs = {"batch_size": 6, "channels_last": False, **options}
        other = predict_paths(bundle, paths, torch.device("cpu"), tta=make_tta("hflip"), progress=False, **kwargs)
        np.testing.assert_allclose(other.probs, base.probs, atol=1e-5, err_msg=str(options))
        assert (bundle.task.decide(other.probs) == bundle.task.decide(base.probs)).all()


def test_workers_do_not_change_predictions(tmp_path, weights):
    test_dir = make_test_folder(tmp_path / "testB", n=5)
    run_main(weights, test_dir, tmp_path / "a")
    run.main(["--weights", str(weights), "--test-dir", str(test_dir), "--out-dir", str(tmp_path / "b"),
              "--quiet", "--workers", "2"])
    for name in ("cla_pre.csv", "fea_pre.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_unreadable_checkpoint_fails_that_task_only(tmp_path, weights, capsys, backend):
    shutil.copytree(weights, tmp_path / "w")
    fold = tmp_path / "w/cla/fold0.pt"
    fold.write_bytes(b"not a checkpoint")
    manifest = json.loads((tmp_path / "w/cla/manifest.json").read_text())
    manifest["folds"][0]["sha256"] = sha256(fold)  # the checksum matches: only loading can tell
    (tmp_path / "w/cla/manifest.json").write_text(json.dumps(manifest))
    test_dir = make_test_folder(tmp_path / "testB", n=2)
    assert run_main(tmp_path / "w", test_dir, tmp_path / "out", "--backend", backend, "--device", "cpu") == 1
    assert (tmp_path / "out/fea_pre.csv").is_file() and not (tmp_path / "out/cla_pre.csv").exists()
    assert f"{fold}: cannot read this checkpoint" in capsys.readouterr().err


def test_a_slow_read_is_given_up_and_predicted_from_the_prior(tmp_path, monkeypatch):
    import model.images
    import model.predict
    make_bundle(tmp_path / "w/fea", FEA_TASK, prior=[0.9, 0.9, 0.9, 0.9])
    save_image(tmp_path / "testB/fea/0001.png", fake_ultrasound(1))
    real = Path.read_bytes

    def hang(self):
        if self.name == "0001.png":
            import time
            time.sleep(5)
        return real(self)
    monkeypatch.setattr(model.images.Path, "read_bytes", hang)
    monkeypatch.setattr(model.predict, "READ_TIMEOUT", 0.2)
    assert run_main(tmp_path / "w", tmp_path / "testB", tmp_path / "out") == 0
    assert pd.read_csv(tmp_path / "out/fea_pre.csv").iloc[0].tolist() == [1, 1, 1, 1, 1]
