import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import model.bundle as bundle_module
import model.onnx_backend as onnx_backend
import run
from model.bundle import load_bundle, make_tta
from model.onnx_backend import CACHE, select_engine
from model.predict import predict_paths
from tests.helpers import make_bundle, make_test_folder

PROJECT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(onnx_backend.unavailable_reason() is not None, reason="onnx/onnxruntime not installed")


@pytest.mark.parametrize("task", ["cla", "fea"])
def test_onnx_runtime_matches_pytorch(tmp_path, task):
    bundle = load_bundle(make_bundle(tmp_path / task, task, folds=2))
    paths = sorted(make_test_folder(tmp_path / "testB", n=5).joinpath(task).iterdir())
    engine, note = select_engine(bundle, "onnx", torch.device("cpu"))
    assert note is None and engine.name == "onnxruntime"
    tta = make_tta("hflip")
    fast = predict_paths(bundle, paths, torch.device("cpu"), tta=tta, progress=False, engine=engine)
    reference = predict_paths(bundle, paths, torch.device("cpu"), tta=tta, progress=False, channels_last=False)
    assert np.abs(fast.probs - reference.probs).max() < 1e-4
    assert (bundle.task.decide(fast.probs) == bundle.task.decide(reference.probs)).all()


def test_exported_graph_is_cached_and_reused(tmp_path):
    bundle = load_bundle(make_bundle(tmp_path / "cla", "cla"))
    select_engine(bundle, "onnx", torch.device("cpu"))
    (cached,) = (tmp_path / "cla" / CACHE).glob("ensemble-*.onnx")
    before = cached.stat().st_mtime_ns
    assert stat.S_IMODE(cached.stat().st_mode) & 0o044  # readable by others, like any output
    select_engine(bundle, "onnx", torch.device("cpu"))
    assert cached.stat().st_mtime_ns == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into a read-only folder")
def test_read_only_bundle_folder_still_uses_onnx(tmp_path):
    folder = make_bundle(tmp_path / "cla", "cla")
    bundle = load_bundle(folder)
    folder.chmod(0o555)
    try:
        engine, note = select_engine(bundle, "onnx", torch.device("cpu"))
    finally:
        folder.chmod(0o755)
    assert engine.name == "onnxruntime" and note is None


def test_falls_back_to_pytorch_when_onnx_is_missing_or_fails(tmp_path, weights, monkeypatch, capsys):
    monkeypatch.setattr(onnx_backend, "unavailable_reason", lambda: "onnxruntime is not installed")
    test_dir = make_test_folder(tmp_path / "testB", n=3)
    assert run.main(["--weights", str(weights), "--test-dir", str(test_dir), "--out-dir", str(tmp_path / "a"),
                     "--quiet", "--workers", "0", "--backend", "onnx"]) == 0
    captured = capsys.readouterr()
    assert "ONNX Runtime not used for cla: onnxruntime is not installed; falling back to PyTorch" in captured.err
    assert "(pytorch)" in captured.out
    monkeypatch.undo()

    def broken_export(bundle):
        raise RuntimeError("unsupported operator")
    monkeypatch.setattr(onnx_backend, "export_ensemble", broken_export)
    bundle = load_bundle(make_bundle(tmp_path / "fea", "fea"))  # no cached graph, so it must export
    engine, note = select_engine(bundle, "auto", torch.device("cpu"))
    assert engine.name == "pytorch" and "export failed (RuntimeError: unsupported operator)" in note
    assert len(pd.read_csv(tmp_path / "a/cla_pre.csv")) == 3


def test_parallel_streams_give_the_same_probabilities(tmp_path):
    bundle = load_bundle(make_bundle(tmp_path / "fea", "fea", folds=2))
    paths = sorted(make_test_folder(tmp_path / "testB", n=5).joinpath("fea").iterdir())
    data = onnx_backend.export_ensemble(bundle)
    one, three = onnx_backend.OnnxEnsemble(data, threads=1), onnx_backend.OnnxEnsemble(data, threads=3)
    assert (one.streams, three.streams) == (1, 3)
    tta = make_tta("hflip")
    serial = predict_paths(bundle, paths, torch.device("cpu"), batch_size=1, tta=tta, progress=False, engine=one)
    parallel = predict_paths(bundle, paths, torch.device("cpu"), batch_size=1, tta=tta, progress=False, engine=three)
    np.testing.assert_array_equal(parallel.probs, serial.probs)  # same batches, same order: bit for bit


def test_cached_graph_runs_without_reading_the_checkpoints(tmp_path, monkeypatch):
    folder = make_bundle(tmp_path / "cla", "cla")
    select_engine(load_bundle(folder), "onnx", torch.device("cpu"))  # exports and caches

    def unreadable(path):
        raise AssertionError(f"{path} read although the cached graph serves")
    monkeypatch.setattr(bundle_module, "load_checkpoint", unreadable)
    engine, note = select_engine(load_bundle(folder, lazy=True), "onnx", torch.device("cpu"))
    assert engine.name == "onnxruntime" and note is None


def test_unusable_cached_graph_is_exported_again(tmp_path):
    folder = make_bundle(tmp_path / "cla", "cla")
    select_engine(load_bundle(folder), "onnx", torch.device("cpu"))
    (cached,) = (folder / CACHE).glob("ensemble-*.onnx")
    good = cached.read_bytes()
    cached.write_bytes(good[: len(good) // 3])  # truncated, as by a full disk
    engine, note = select_engine(load_bundle(folder, lazy=True), "onnx", torch.device("cpu"))
    assert engine.name == "onnxruntime" and note is None
    assert cached.read_bytes() == good


def test_bf16_on_cpu_runs_on_pytorch(tmp_path):
    bundle = load_bundle(make_bundle(tmp_path / "cla", "cla"), lazy=True)
    engine, note = select_engine(bundle, "auto", torch.device("cpu"), precision="bf16")
    assert engine.name == "pytorch" and note is None
    engine, note = select_engine(bundle, "onnx", torch.device("cpu"), precision="bf16")
    assert engine.name == "pytorch" and "fp32 only" in note


def test_run_on_cached_graphs_never_imports_timm(tmp_path):
    """timm (and torchvision under it) costs 2 s of start-up that a run served by cached graphs does not need."""
    weights = tmp_path / "w"
    for name in ("cla", "fea"):
        select_engine(load_bundle(make_bundle(weights / name, name)), "onnx", torch.device("cpu"))  # caches
    test_dir = make_test_folder(tmp_path / "testB", n=2)
    code = ("import sys, run; code = run.main(sys.argv[1:]); "
            "assert 'timm' not in sys.modules, 'timm imported'; sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", code, "--weights", str(weights), "--test-dir", str(test_dir),
                             "--out-dir", str(tmp_path / "out"), "--quiet", "--device", "cpu"],
                            cwd=PROJECT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "(onnxruntime)" in result.stdout and (tmp_path / "out/fea_pre.csv").is_file()
