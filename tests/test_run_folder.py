"""The run folder has one owner (model.training.run_folder): its paths, and the done.json record that marks
a fold finished, written in one place."""
from __future__ import annotations

import ast
import json

import numpy as np

from model.training.run_folder import RunFolder, done_record
from tests.helpers import PROJECT

FOLD_FILES = ("last.pt", "best.pt", "oof.npy", "history.json", "done.json", "curves.png")


def test_every_path_of_a_run_and_of_its_folds(tmp_path):
    run = RunFolder(str(tmp_path))
    assert [run.task_file, run.config_file, run.samples, run.log_file, run.failed, run.oof_csv, run.metrics,
            run.gallery, run.probe_heads, run.probe_oof] == [
        tmp_path / name for name in ("task.yaml", "config.yaml", "samples.csv", "train.log", "FAILED", "oof.csv",
                                     "metrics.json", "errors.png", "probe/heads.npz", "probe/oof.npy")]
    fold = run.fold(3)
    assert fold.fold == 3 and fold.path == tmp_path / "fold3"
    assert [fold.last, fold.best, fold.oof, fold.history, fold.done, fold.curves] == [
        tmp_path / "fold3" / name for name in FOLD_FILES]
    # Each name is in the module's description of the layout, the one place it is written down.
    import model.training.run_folder as module
    assert all(name in module.__doc__ for name in (*FOLD_FILES, "fold<k>/", "task.yaml", "samples.csv", "FAILED"))


def test_the_done_record_round_trips_and_finishes_the_fold(tmp_path):
    fold = RunFolder(tmp_path).fold(1)
    assert fold.read_done() is None and not fold.is_done()
    fold.last.parent.mkdir(parents=True)
    fold.last.write_bytes(b"resume state")
    record = done_record(1, 4, 0.75, 5, 12, "bf16", 2.5, log_vars=[0.1, -0.2], processes=2, global_batch_size=16)
    fold.finish(record)
    assert fold.is_done() and fold.read_done() == record and not fold.last.exists()
    assert list(json.loads(fold.done.read_text())) == ["fold", "selected_epoch", "score", "log_vars", "epochs_run",
                                                       "n_val", "precision", "seconds_per_epoch", "processes",
                                                       "global_batch_size"]
    assert [p.name for p in fold.path.iterdir()] == ["done.json"]        # no temporary file is left behind
    # A single process, a loss without learned weights, no epochs (the probe's folds): those keys are left out.
    assert done_record(0, 0, 0.5, 0, 3, "fp32", None) == {
        "fold": 0, "selected_epoch": 0, "score": 0.5, "epochs_run": 0, "n_val": 3, "precision": "fp32",
        "seconds_per_epoch": None}


def test_history_and_oof_round_trip_and_mark_the_folder_worth_keeping(tmp_path):
    run = RunFolder(tmp_path)
    assert not run.any_epoch_trained()
    fold = run.fold(0)
    fold.save_oof(np.arange(6.0).reshape(3, 2))
    fold.write_history([{"epoch": 1, "train_loss": 1.0, "val_score": 0.5, "lr": 1e-3, "seconds": 1.0}])
    np.testing.assert_array_equal(fold.load_oof(), np.arange(6.0).reshape(3, 2))
    assert fold.read_history()[0]["epoch"] == 1 and run.any_epoch_trained()


def _literal_strings(tree: ast.AST) -> list[str]:
    """The module's string literals less its docstrings, with each f-string's literal parts joined by '{'."""
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            found.append("{".join(v.value for v in node.values if isinstance(v, ast.Constant)) + "{")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            found.append(node.value)
    return found


def test_only_the_run_folder_names_a_fold_folder_or_its_files():
    owners = set()
    for path in sorted((PROJECT / "model" / "training").glob("*.py")):
        strings = _literal_strings(ast.parse(path.read_text(encoding="utf-8")))
        if any(s.startswith("fold{") or any(name in s for name in FOLD_FILES) for s in strings):
            owners.add(path.name)
    assert owners == {"run_folder.py"}     # so done.json has one writer, FoldFolder.finish
