import datetime as dt
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

import run
from model.check import check_submission
from model.onnx_backend import record_graph
from model.runner import RunOptions
from model.submissions import SubmissionError, plot, read_leaderboard, record, set_public
from tests.helpers import make_bundle, make_test_folder

PROJECT = Path(__file__).resolve().parents[1]


def project_copy(tmp_path):
    """A submission folder's environment files, to break without touching the real ones."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("environment.yml", "requirements.txt"):
        shutil.copy(PROJECT / name, project / name)
    return project


def check(project, weights, **kwargs):
    return check_submission(project, RunOptions(test_dir=Path("unused"), out_dir=Path("unused"), weights=weights),
                            **kwargs)


def test_check_passes_on_a_good_folder_and_times_it(tmp_path, weights):
    report = check(project_copy(tmp_path), weights, n_images=1000, dry_run_images=4)
    assert report.ok, report.problems
    assert any("estimated time for 1000 images per task" in note for note in report.notes)
    assert 0.0005 < report.per_image_seconds < 5                    # a tiny network on 4 small images per task
    assert report.estimate_seconds == pytest.approx(report.estimate_seconds) and report.estimate_seconds > 1000 * 0.0005


def test_check_states_folds_coverage_and_cv_and_warns_when_thin(tmp_path, capsys):
    cv = {"metric": "competition", "oof_score_tuned_rule": 0.3017543859649122, "folds_done": [0],
          "folds_missing": [1, 2, 3, 4], "n_oof": 30, "n_images": 150}
    make_bundle(tmp_path / "w/cla", "cla", folds=1, cv=cv)
    report = check(project_copy(tmp_path), tmp_path / "w", dry_run_images=2)
    assert report.ok, report.problems
    note = next(n for n in report.notes if n.startswith("cla: "))
    assert "1 fold network(s)" in note and "OOF over 30 of 150 images from 1 fold(s)" in note and "0.3018" in note
    assert "0.30175" not in note
    (warning,) = report.warnings
    assert "only 1 fold network(s)" in warning and "folds [1, 2, 3, 4] were never trained" in warning
    assert "the CV rests on 30 out-of-fold images" in warning
    from model.check import print_report
    print_report(report)
    assert "ready to hand in, with 1 warning(s) above" in capsys.readouterr().out


def test_check_names_a_corrupted_weight_file(tmp_path, weights):
    broken = tmp_path / "w"
    shutil.copytree(weights, broken)
    data = bytearray((broken / "fea/fold0.pt").read_bytes())
    data[200] ^= 0x55
    (broken / "fea/fold0.pt").write_bytes(bytes(data))
    report = check(project_copy(tmp_path), broken, dry_run_images=2)
    assert not report.ok
    assert any(f"{broken / 'fea/fold0.pt'}: sha256" in p and "restore it from git or re-export" in p
               for p in report.problems)


def test_check_names_a_missing_bundle(tmp_path, weights):
    partial = tmp_path / "w"
    shutil.copytree(weights / "cla", partial / "cla")
    (partial / "fea").mkdir()
    report = check(project_copy(tmp_path), partial, dry_run_images=2)
    assert [p for p in report.problems if f"{partial / 'fea' / 'manifest.json'}: no bundle here" in p]


def test_check_verifies_the_onnx_graph_run_py_would_load(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    folder = make_bundle(tmp_path / "w/cla", "cla")
    record_graph(folder)
    project = project_copy(tmp_path)
    report = check(project, tmp_path / "w", dry_run_images=2)
    assert any("cla: ONNX graph cached and verified" in n for n in report.notes)
    (cached,) = (tmp_path / "cache/onnx").glob("*.onnx")
    cached.write_bytes(b"doctored")
    report = check(project, tmp_path / "w", dry_run_images=2)
    assert any("does not hash to the bundle's record" in w for w in report.warnings)


def test_check_catches_requirements_that_disagree(tmp_path, weights):
    project = project_copy(tmp_path)
    (project / "environment.yml").write_text("name: x\ndependencies:\n  - python=3.11\n  - pip\n"
                                             "  - pip:\n      - torch==2.0.0\n")
    (project / "requirements.txt").write_text("torch>=2\n")
    report = check(project, weights, dry_run_images=2)
    text = "\n".join(report.problems)
    assert "requirements.txt:1: 'torch>=2' is not an exact pin" in text
    assert "its pip section must be exactly '- -r requirements.txt'" in text


def test_run_py_check_exit_code(tmp_path, weights, capsys):
    assert run.main(["--check", "--weights", str(tmp_path / "none"), "--workers", "0"]) == 1
    assert "check FAILED" in capsys.readouterr().out
    assert run.main(["--check", "--weights", str(weights), "--workers", "0", "--images", "10"]) == 0
    assert "check passed" in capsys.readouterr().out


def test_record_archives_exactly_what_was_submitted_and_plot_draws_every_scored_row(tmp_path, weights):
    test_dir = make_test_folder(tmp_path / "testB", n=3)
    preds = tmp_path / "preds"
    run.main(["--weights", str(weights), "--test-dir", str(test_dir), "--out-dir", str(preds), "--quiet",
              "--workers", "0"])
    gt = tmp_path / "gt"
    gt.mkdir()
    (gt / "cla_gt.csv").write_text("id,label\n1,0\n2,1\n3,2\n")
    root = tmp_path / "submissions"
    row = record("first", preds, weights, gt, "baseline", root=root, today=dt.date(2026, 5, 1))
    archive = root / "2026-05-01-first"
    for name in ("cla_pre.csv", "fea_pre.csv"):
        assert (archive / name).read_bytes() == (preds / name).read_bytes()
    assert json.loads((archive / "fea_manifest.json").read_text()) == json.loads((weights / "fea/manifest.json").read_text())
    saved = json.loads((archive / "submission.json").read_text())
    assert saved["local_report"]["cla"]["scores"]["score"] == row["local_cla"] and row["notes"] == "baseline"
    cv_weights = tmp_path / "cv_weights"
    shutil.copytree(weights, cv_weights)
    for task, score in (("cla", 0.5), ("fea", 0.7)):
        manifest = json.loads((cv_weights / task / "manifest.json").read_text())
        manifest["cv"] = {"oof_score_tuned_rule": score}
        (cv_weights / task / "manifest.json").write_text(json.dumps(manifest))
    second = record("second", preds, cv_weights, gt, root=root, today=dt.date(2026, 5, 2))
    assert second["oof_overall"] == pytest.approx(0.6) and second["local_overall"] == pytest.approx(second["local_cla"])
    board = read_leaderboard(root)
    assert board["name"].tolist() == ["first", "second"]
    with pytest.raises(SubmissionError, match="already recorded"):
        record("first", preds, weights, root=root)
    assert len(read_leaderboard(root)) == 2
    out = plot(tmp_path / "local.png", root)                     # a local score alone is enough to be drawn
    assert Image.open(out).size[0] > 300
    set_public("second", 0.64, root)
    assert pd.read_csv(root / "leaderboard.csv")["public_score"].tolist()[1] == 0.64
    with pytest.raises(SubmissionError, match="no submission named 'third'"):
        set_public("third", 0.5, root)


def test_a_submission_with_a_task_that_cannot_be_scored_is_not_recorded(tmp_path, weights):
    preds = tmp_path / "preds"
    preds.mkdir()
    (preds / "cla_pre.csv").write_text("name,cls\n1,0\n")                  # a broken prediction file
    (preds / "fea_pre.csv").write_text("id,boundary,calcification,direction,shape\n1,1,0,0,1\n")
    gt = tmp_path / "gt"
    gt.mkdir()
    (gt / "cla_gt.csv").write_text("id,label\n1,0\n")
    (gt / "fea_gt.csv").write_text("id,boundary,calcification,direction,shape\n1,1,0,0,1\n")
    root = tmp_path / "submissions"
    with pytest.raises(SubmissionError, match=r"not recorded, a task cannot be scored .*cla: .*header \['name', 'cls'\]"):
        record("broken", preds, weights, gt, root=root)
    assert not root.exists() or not any(root.iterdir())                    # no archive, no staging left behind


def test_plot_needs_a_scored_submission(tmp_path):
    with pytest.raises(SubmissionError, match="no submission has an OOF score and a public or local score"):
        plot(tmp_path / "p.png", tmp_path / "empty")


def test_submissions_cli_errors_are_messages(tmp_path, weights, capsys):
    from model.cli import guarded
    from model.submissions import main
    code = guarded(main, ["record", "x", "--pred-dir", str(tmp_path), "--weights", str(weights)])
    assert code == 2 and f"missing {tmp_path / 'cla_pre.csv'}" in capsys.readouterr().err
    assert guarded(main, ["record", "bad name!", "--pred-dir", str(tmp_path)]) == 2
    assert "use letters, digits" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["public", "x", "high"])
    assert "invalid float value: 'high'" in capsys.readouterr().err
