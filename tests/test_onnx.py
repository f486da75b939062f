import hashlib
import json
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
from model.bundle import load_bundle
from model.ensemble import make_tta
from model.onnx_backend import cache_dir, cached_graph, record_graph, select_engine
from model.predict import predict_paths
from tests.helpers import make_bundle, make_test_folder

PROJECT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(onnx_backend.unavailable_reason() is not None, reason="onnx/onnxruntime not installed")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty graph cache of this test's own."""
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "onnx"


def recorded_bundle(folder, task, seed=0):
    make_bundle(folder, task, seed=seed)
    record_graph(folder)
    return folder


@pytest.mark.parametrize("task", ["cla", "fea"])
def test_onnx_runtime_matches_pytorch(tmp_path, task, cache):
    bundle = load_bundle(make_bundle(tmp_path / task, task, folds=2))
    assert_onnx_matches_pytorch(bundle, sorted(make_test_folder(tmp_path / "testB", n=5).joinpath(task).iterdir()))


def assert_onnx_matches_pytorch(bundle, paths) -> None:
    engine, note = select_engine(bundle, "onnx", torch.device("cpu"))
    assert note is None and engine.name == "onnxruntime"
    tta = make_tta("hflip")
    fast = predict_paths(bundle, paths, torch.device("cpu"), tta=tta, progress=False, engine=engine)
    reference = predict_paths(bundle, paths, torch.device("cpu"), tta=tta, progress=False, channels_last=False)
    assert np.abs(fast.probs - reference.probs).max() < 1e-4
    assert (bundle.task.decide(fast.probs) == bundle.task.decide(reference.probs)).all()


def test_export_records_the_graph_and_run_reuses_the_verified_cache(tmp_path, cache, monkeypatch):
    folder = recorded_bundle(tmp_path / "cla", "cla")
    record = json.loads((folder / "manifest.json").read_text())["onnx"]
    cached = cache / f"{record['sha256']}.onnx"
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == record["sha256"]
    assert cached.stat().st_mode & 0o044 == 0o044                   # readable by others, like any output
    assert not any(p.suffix == ".onnx" for p in folder.rglob("*"))  # nothing cached inside the bundle

    def no_export(bundle):
        raise AssertionError("exported although a verified graph is cached")
    monkeypatch.setattr(onnx_backend, "export_ensemble", no_export)
    engine, note = select_engine(load_bundle(folder, lazy=True), "onnx", torch.device("cpu"))
    assert engine.name == "onnxruntime" and note is None


def test_the_same_bundle_exports_the_same_graph(tmp_path, cache):
    """What makes the recorded hash usable: the export is deterministic for given weights and versions."""
    folder = make_bundle(tmp_path / "fea", "fea")
    first = onnx_backend.build_graph(load_bundle(folder))
    assert onnx_backend.build_graph(load_bundle(folder)) == first


def test_a_doctored_cached_graph_is_never_run(tmp_path, cache):
    folder = recorded_bundle(tmp_path / "cla", "cla")
    other = recorded_bundle(tmp_path / "other", "cla", seed=5)     # a valid graph with other weights
    cached = cache / f"{json.loads((folder / 'manifest.json').read_text())['onnx']['sha256']}.onnx"
    good = cached.read_bytes()
    doctored = (cache / f"{json.loads((other / 'manifest.json').read_text())['onnx']['sha256']}.onnx").read_bytes()
    cached.write_bytes(doctored)
    bundle = load_bundle(folder, lazy=True)
    assert cached_graph(bundle)[1] == "mismatch"
    test_dir = make_test_folder(tmp_path / "testB", n=4)
    paths = sorted((test_dir / "cla").iterdir())
    engine, _ = select_engine(bundle, "onnx", torch.device("cpu"))
    served = predict_paths(bundle, paths, torch.device("cpu"), progress=False, engine=engine)
    reference = predict_paths(load_bundle(folder), paths, torch.device("cpu"), progress=False, channels_last=False)
    assert np.abs(served.probs - reference.probs).max() < 1e-4      # the bundle's own weights, not the doctored graph
    assert cached.read_bytes() == good                              # and the cache is repaired


def test_a_truncated_cached_graph_is_exported_again(tmp_path, cache):
    folder = recorded_bundle(tmp_path / "cla", "cla")
    (cached,) = cache.glob("*.onnx")
    good = cached.read_bytes()
    cached.write_bytes(good[: len(good) // 3])  # as by a full disk
    engine, note = select_engine(load_bundle(folder, lazy=True), "onnx", torch.device("cpu"))
    assert engine.name == "onnxruntime" and note is None and cached.read_bytes() == good


def test_run_never_writes_into_the_bundle_and_works_without_a_writable_cache(tmp_path, monkeypatch):
    folder = make_bundle(tmp_path / "w/cla", "cla")
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    (tmp_path / "blocker").write_text("a file where the cache folder would go")
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "blocker"))  # mkdir fails, even for root
    test_dir = make_test_folder(tmp_path / "testB", n=2)
    assert run.main(["--weights", str(tmp_path / "w"), "--test-dir", str(test_dir), "--out-dir", str(tmp_path / "out"),
                     "--quiet", "--device", "cpu"]) == 0
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before
    assert len(pd.read_csv(tmp_path / "out/cla_pre.csv")) == 2


def test_falls_back_to_pytorch_when_onnx_is_missing_or_fails(tmp_path, weights, monkeypatch, capsys, cache):
    monkeypatch.setattr(onnx_backend, "unavailable_reason", lambda: "onnxruntime is not installed")
    test_dir = make_test_folder(tmp_path / "testB", n=3)
    assert run.main(["--weights", str(weights), "--test-dir", str(test_dir), "--out-dir", str(tmp_path / "a"),
                     "--quiet", "--workers", "0", "--backend", "onnx", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "ONNX Runtime not used for cla: onnxruntime is not installed; falling back to PyTorch" in captured.err
    assert "(pytorch" in captured.out
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
    one, three = onnx_backend.OnnxEnsemble(data, 1, bundle.task.kind), onnx_backend.OnnxEnsemble(data, 3, bundle.task.kind)
    assert (one.streams, three.streams) == (1, 3)
    tta = make_tta("hflip")
    serial = predict_paths(bundle, paths, torch.device("cpu"), batch_size=1, tta=tta, progress=False, engine=one)
    parallel = predict_paths(bundle, paths, torch.device("cpu"), batch_size=1, tta=tta, progress=False, engine=three)
    np.testing.assert_array_equal(parallel.probs, serial.probs)  # same batches, same order: bit for bit


def test_cached_graph_runs_without_reading_the_checkpoints(tmp_path, monkeypatch, cache):
    folder = recorded_bundle(tmp_path / "cla", "cla")

    def unreadable(path):
        raise AssertionError(f"{path} read although the cached graph serves")
    monkeypatch.setattr(bundle_module, "load_checkpoint", unreadable)
    engine, note = select_engine(load_bundle(folder, lazy=True), "onnx", torch.device("cpu"))
    assert engine.name == "onnxruntime" and note is None


def test_bf16_on_cpu_runs_on_pytorch(tmp_path):
    bundle = load_bundle(make_bundle(tmp_path / "cla", "cla"), lazy=True)
    engine, note = select_engine(bundle, "auto", torch.device("cpu"), precision="bf16")
    assert engine.name == "pytorch" and note is None
    engine, note = select_engine(bundle, "onnx", torch.device("cpu"), precision="bf16")
    assert engine.name == "pytorch" and "fp32 only" in note


def test_run_on_cached_graphs_never_imports_timm(tmp_path, cache):
    """timm (and torchvision under it) costs 2 s of start-up that a run served by cached graphs does not need."""
    weights = tmp_path / "w"
    for name in ("cla", "fea"):
        recorded_bundle(weights / name, name)
    test_dir = make_test_folder(tmp_path / "testB", n=2)
    code = ("import sys, run; code = run.main(sys.argv[1:]); "
            "assert 'timm' not in sys.modules, 'timm imported'; sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", code, "--weights", str(weights), "--test-dir", str(test_dir),
                             "--out-dir", str(tmp_path / "out"), "--quiet", "--device", "cpu"],
                            cwd=PROJECT, capture_output=True, text=True, timeout=300,
                            env={**__import__("os").environ, "HARNESS_CACHE_DIR": str(cache.parent)})
    assert result.returncode == 0, result.stderr
    assert "(onnxruntime" in result.stdout and (tmp_path / "out/fea_pre.csv").is_file()
    assert cache_dir() == cache


def test_onnx_runtime_matches_pytorch_for_a_per_image_normalised_segmentation_bundle(tmp_path, cache):
    from tests.helpers import make_seg_bundle, make_seg_images, seg_task
    bundle = load_bundle(make_seg_bundle(tmp_path / "blobs", seg_task(), input_norm="image"))
    assert bundle.ensemble.norm.per_image
    assert_onnx_matches_pytorch(bundle, make_seg_images(tmp_path / "test", n=3, size=(40, 72)))


def other_machines_record(folder):
    """The bundle's manifest as exported on another machine, whose graph hashes differently from ours
    (the manifest has no hash of its own: load_bundle verifies the weight files it lists)."""
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["onnx"] = {"sha256": "0" * 64, "versions": onnx_backend.versions()}
    manifest_path.write_text(json.dumps(manifest))
    return folder


def counting_exports(monkeypatch):
    calls = []
    real = onnx_backend.export_ensemble

    def export(bundle):
        calls.append(bundle.name)
        return real(bundle)
    monkeypatch.setattr(onnx_backend, "export_ensemble", export)
    return calls


def test_a_graph_built_here_is_cached_although_the_record_names_another_machines(tmp_path, cache, monkeypatch):
    from model.check import CheckReport, check_graphs
    folder = other_machines_record(make_bundle(tmp_path / "cla", "cla"))
    calls = counting_exports(monkeypatch)
    _, status, message = cached_graph(load_bundle(folder, lazy=True))
    key = onnx_backend.graph_key(load_bundle(folder, lazy=True))
    assert status == "missing" and str(cache / f"{key}.onnx") in message

    first, note = select_engine(load_bundle(folder, lazy=True), "onnx", torch.device("cpu"))
    assert note is None and first.name == "onnxruntime" and len(calls) == 1
    graph, sidecar = cache / f"{key}.onnx", cache / f"{key}.json"
    assert json.loads(sidecar.read_text())["sha256"] == hashlib.sha256(graph.read_bytes()).hexdigest()
    assert not (cache / f"{'0' * 64}.onnx").exists()

    bundle = load_bundle(folder, lazy=True)
    data, status, message = cached_graph(bundle)
    assert status == "verified" and data == graph.read_bytes() and "built on this machine" in message
    report = CheckReport()
    check_graphs([bundle], report)
    assert any("ONNX graph cached and verified" in n for n in report.notes) and not report.warnings
    second, note = select_engine(bundle, "onnx", torch.device("cpu"))
    assert note is None and second.name == "onnxruntime" and len(calls) == 1   # loaded, not exported again


def test_the_key_changes_with_the_weights_and_the_versions(tmp_path, monkeypatch):
    one = load_bundle(make_bundle(tmp_path / "a", "cla"), lazy=True)
    other = load_bundle(make_bundle(tmp_path / "b", "cla", seed=5), lazy=True)
    key = onnx_backend.graph_key(one)
    assert key == onnx_backend.graph_key(load_bundle(tmp_path / "a", lazy=True)) != onnx_backend.graph_key(other)
    monkeypatch.setattr(onnx_backend, "versions", lambda: "torch 0, onnxruntime 0, opset 0")
    assert onnx_backend.graph_key(one) != key


def test_a_tampered_graph_built_here_is_exported_again_not_loaded(tmp_path, cache, monkeypatch):
    folder = other_machines_record(make_bundle(tmp_path / "cla", "cla"))
    select_engine(load_bundle(folder, lazy=True), "onnx", torch.device("cpu"))
    key = onnx_backend.graph_key(load_bundle(folder, lazy=True))
    graph = cache / f"{key}.onnx"
    good = graph.read_bytes()
    other = make_bundle(tmp_path / "other", "cla", seed=5)          # a valid graph with other weights
    graph.write_bytes(onnx_backend.build_graph(load_bundle(other)))
    bundle = load_bundle(folder, lazy=True)
    _, status, message = cached_graph(bundle)
    assert status == "mismatch" and "exported again" in message
    calls = counting_exports(monkeypatch)
    loaded = []
    real_session = onnx_backend.OnnxEnsemble

    def session(data, threads, kind):
        loaded.append(data)
        return real_session(data, threads, kind)
    monkeypatch.setattr(onnx_backend, "OnnxEnsemble", session)
    engine, note = select_engine(bundle, "onnx", torch.device("cpu"))
    assert note is None and len(calls) == 1 and loaded == [good]    # the bundle's own graph, not the doctored one
    assert graph.read_bytes() == good and cached_graph(load_bundle(folder, lazy=True))[1] == "verified"


def test_check_says_every_run_exports_when_the_cache_is_not_writable(tmp_path, monkeypatch):
    folder = other_machines_record(make_bundle(tmp_path / "cla", "cla"))
    (tmp_path / "blocker").write_text("a file where the cache folder would go")
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "blocker"))
    _, status, message = cached_graph(load_bundle(folder, lazy=True))
    assert status == "unwritable" and "exported on every run" in message


def checked(tmp_path, weights, **options):
    """run.py --check on ``weights``, with a copy of the project's environment files."""
    import shutil
    from model.check import check_submission
    from model.runner import RunOptions
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    for name in ("environment.yml", "requirements.txt"):
        shutil.copy(PROJECT / name, project / name)
    return check_submission(project, RunOptions(Path("unused"), Path("unused"), weights, **options), dry_run_images=2)


def graph_notes(report, name="cla"):
    return [n for n in report.notes + report.warnings if n.startswith(f"{name}: ") and "ONNX" in n]


def test_check_says_what_the_next_run_does_and_the_next_run_does_it(tmp_path, cache, monkeypatch):
    other_machines_record(make_bundle(tmp_path / "w/cla", "cla"))
    first = checked(tmp_path, tmp_path / "w")
    # The check's dry run exported the graph and cached it, so the next run loads it: that is what it says.
    (graph,) = cache.glob("*.onnx")
    loads = (f"cla: ONNX graph cached and verified (built on this machine from the verified weights: {graph}): "
             "the next run loads it")
    assert graph_notes(first) == [loads.replace("graph ", "graph exported by this check's dry run, ", 1)]
    calls = counting_exports(monkeypatch)
    test_dir = make_test_folder(tmp_path / "testB", n=2)
    assert run.main(["--weights", str(tmp_path / "w"), "--test-dir", str(test_dir), "--out-dir", str(tmp_path / "out"),
                     "--quiet", "--device", "cpu", "--tasks", "cla"]) == 0
    assert calls == []                                              # loaded, as the check said
    assert graph_notes(checked(tmp_path, tmp_path / "w")) == [loads] and calls == []

    graph.write_bytes(graph.read_bytes()[:100])                     # a damaged cache: said, and repaired
    third = checked(tmp_path, tmp_path / "w")
    note, warning = graph_notes(third)                             # notes first, then warnings
    assert f"{graph} does not hash to its record" in warning and "exported again" in warning and warning in third.warnings
    assert note == loads.replace("graph ", "graph exported by this check's dry run, ", 1) and len(calls) == 1


def test_check_says_when_every_run_exports_or_none_uses_the_graph(tmp_path, monkeypatch):
    other_machines_record(make_bundle(tmp_path / "w/cla", "cla"))
    (tmp_path / "blocker").write_text("a file where the cache folder would go")
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "blocker"))
    assert graph_notes(checked(tmp_path, tmp_path / "w")) == [
        f"cla: ONNX graph cache folder {tmp_path / 'blocker/onnx'} is not writable: exported on every run"]
    assert graph_notes(checked(tmp_path, tmp_path / "w", backend="torch")) == [
        "cla: run.py runs PyTorch (pytorch) with these options; no ONNX graph is used"]

    def broken_export(bundle):
        raise RuntimeError("unsupported operator")
    monkeypatch.setattr(onnx_backend, "export_ensemble", broken_export)
    report = checked(tmp_path, tmp_path / "w")
    assert [w for w in report.warnings if "ONNX" in w] == [
        "cla: ONNX Runtime not used for cla: export failed (RuntimeError: unsupported operator); falling back to PyTorch"]
