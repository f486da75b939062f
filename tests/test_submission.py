import datetime as dt
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

import run
from model.check import check_submission
from model.submissions import SubmissionError, plot, read_leaderboard, record, set_public
from tests.helpers import make_test_folder

PROJECT = Path(__file__).resolve().parents[1]


def project_copy(tmp_path):
    """A submission folder's environment files, to break without touching the real ones."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("environment.yml", "requirements.txt"):
        shutil.copy(PROJECT / name, project / name)
    return project


def test_check_passes_on_a_good_folder(tmp_path, weights, capsys):
    report = check_submission(project_copy(tmp_path), weights, n_images=1000, dry_run_images=4)
    assert report.ok, report.problems
    assert any("estimated time for 1000 images" in note for note in report.notes)
    assert report.per_image_seconds > 0


def test_check_names_a_corrupted_weight_file(tmp_path, weights):
    broken = tmp_path / "w"
    shutil.copytree(weights, broken)
    data = bytearray((broken / "fea/fold0.pt").read_bytes())
    data[200] ^= 0x55
    (broken / "fea/fold0.pt").write_bytes(bytes(data))
    report = check_submission(project_copy(tmp_path), broken, dry_run_images=2)
    assert not report.ok
    assert any(f"{broken / 'fea/fold0.pt'}: sha256" in p and "restore it from git or re-export" in p
               for p in report.problems)


def test_check_names_a_missing_bundle(tmp_path, weights):
    partial = tmp_path / "w"
    shutil.copytree(weights / "cla", partial / "cla")
    report = check_submission(project_copy(tmp_path), partial, dry_run_images=2)
    assert [p for p in report.problems if f"{partial / 'fea' / 'manifest.json'}: no bundle here" in p]


def test_check_catches_requirements_that_disagree(tmp_path, weights):
    project = project_copy(tmp_path)
    (project / "environment.yml").write_text("name: x\ndependencies:\n  - python=3.11\n  - pip\n"
                                             "  - pip:\n      - torch==2.0.0\n")
    (project / "requirements.txt").write_text("torch>=2\n")
    report = check_submission(project, weights, dry_run_images=2)
    text = "\n".join(report.problems)
    assert "requirements.txt:1: 'torch>=2' is not an exact pin" in text
    assert "its pip section must be exactly '- -r requirements.txt'" in text


def test_run_py_check_exit_code(tmp_path, weights, capsys):
    assert run.main(["--check", "--weights", str(tmp_path / "none"), "--workers", "0"]) == 1
    assert "check FAILED" in capsys.readouterr().out


def test_record_appends_exactly_one_row_and_plot_is_written(tmp_path, weights):
    test_dir = make_test_folder(tmp_path / "testB", n=3)
    preds = tmp_path / "preds"
    run.main(["--weights", str(weights), "--test-dir", str(test_dir), "--out-dir", str(preds), "--quiet",
              "--workers", "0"])
    gt = tmp_path / "gt"
    gt.mkdir()
    (gt / "cla_gt.csv").write_text("id,label\n1,0\n2,1\n3,2\n")
    root = tmp_path / "submissions"
    row = record("first", preds, weights, gt, "baseline", root=root, today=dt.date(2026, 5, 1))
    assert (root / "2026-05-01-first" / "cla_pre.csv").is_file()
    assert (root / "2026-05-01-first" / "fea_manifest.json").is_file()
    assert row["local_cla"] is not None and row["notes"] == "baseline"
    cv_weights = tmp_path / "cv_weights"
    shutil.copytree(weights, cv_weights)
    for task, score in (("cla", 0.5), ("fea", 0.7)):
        manifest = json.loads((cv_weights / task / "manifest.json").read_text())
        manifest["cv"] = {"oof_score_tuned_rule": score}
        (cv_weights / task / "manifest.json").write_text(json.dumps(manifest))
    second = record("second", preds, cv_weights, root=root, today=dt.date(2026, 5, 2))
    assert second["oof_overall"] == pytest.approx(0.6)
    board = read_leaderboard(root)
    assert board["name"].tolist() == ["first", "second"]
    with pytest.raises(SubmissionError, match="already recorded"):
        record("first", preds, weights, root=root)
    assert len(read_leaderboard(root)) == 2
    with pytest.raises(SubmissionError, match="no submission has both an OOF score and a public score"):
        plot(tmp_path / "p.png", root)
    set_public("first", 0.61, root)
    set_public("second", 0.64, root)
    assert pd.read_csv(root / "leaderboard.csv")["public_score"].tolist() == [0.61, 0.64]
    out = plot(tmp_path / "p.png", root)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SubmissionError, match="no submission named 'third'"):
        set_public("third", 0.5, root)
