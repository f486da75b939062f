"""An optional ONNX Runtime backend for CPU inference, with automatic fallback to PyTorch.

The whole fold ensemble (normalisation, every fold, softmax/sigmoid, the mean) is exported to one ONNX
graph; a batch's TTA views go through it in one ``session.run``. On the 2-core dev CPU, ONNX Runtime runs
tf_efficientnet_lite0 faster than PyTorch in fp32 (benchmarks/infer.py measures by how much), with
probabilities within 1e-6 of it (tests hold the difference under 1e-4).

Trust: a graph is code ONNX Runtime will run, so nothing unverified is loaded. The export is
deterministic for given weights and library versions, so ``export`` records the graph's sha256 (and those
versions) in the manifest. run.py looks for that graph in a content-addressed cache outside the bundle
(``$HARNESS_CACHE_DIR``, else ``$XDG_CACHE_HOME/medical-harness`` or ``~/.cache/medical-harness``), so a
read-only or zipped submission folder stays clean, and uses it only when its bytes hash to the recorded
value. Otherwise it exports the graph from the verified weights (a few seconds), and caches it when it
hashes to the record. A bundle with no record, or on other library versions, is exported on every run.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

import torch

from .atomic import atomic_path, write_json
from .bundle import MANIFEST, Bundle, BundleError, load_bundle, merge_views, tta_views

log = logging.getLogger(__name__)
OPSET = 17


def unavailable_reason() -> str | None:
    """None when ONNX export and ONNX Runtime can be used here, else why not."""
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
        import onnxruntime  # noqa: F401
    except ImportError as e:
        return f"{e.name} is not installed"
    return None


def cache_dir() -> Path:
    if os.environ.get("HARNESS_CACHE_DIR"):
        return Path(os.environ["HARNESS_CACHE_DIR"]) / "onnx"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "medical-harness" / "onnx"


def versions() -> str:
    import onnxruntime
    return f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, opset {OPSET}"


class OnnxEnsemble:
    """The same ``predict(images, tta)`` as FoldEnsemble, run by ONNX Runtime."""

    name = "onnxruntime"
    input_format = torch.contiguous_format  # NCHW: other layouts would be copied back before every run

    def __init__(self, model_bytes: bytes, threads: int, kind):
        import onnxruntime as ort
        options = ort.SessionOptions()
        # ``threads`` single-threaded streams, each running its own batch (the session is thread-safe),
        # rather than one batch at a time on an intra-op pool: no barrier per operator and no spinning
        # pool threads starving the decode worker. On the 2-core dev CPU run.py took 12.8 s instead of
        # 13.8 s (pool, spinning off) and 17 s (pool, spinning on); see benchmarks/infer.py.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.streams, self.kind = max(1, threads), kind
        self.session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])

    def predict(self, images: torch.Tensor, tta=None) -> torch.Tensor:
        views = tta_views(images, tta) if tta is not None else images
        probs = torch.from_numpy(self.session.run(None, {"images": views.float().contiguous().numpy()})[0])
        return merge_views(self.kind, tta, probs, len(images)) if tta is not None else probs


def export_ensemble(bundle: Bundle) -> bytes:
    ensemble = bundle.ensemble.to(memory_format=torch.contiguous_format)
    dummy = torch.zeros(2, 3, bundle.img_size, bundle.img_size)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice, once per bundle
        torch.onnx.export(ensemble, (dummy,), buffer, dynamo=False, opset_version=OPSET, input_names=["images"],
                          output_names=["probs"], dynamic_axes={"images": {0: "n"}, "probs": {0: "n"}})
    return buffer.getvalue()


def optimise_graph(model_bytes: bytes) -> bytes:
    """The graph after ONNX Runtime's CPU-independent passes (constant folding, Conv+BN+activation
    fusion), so every later session starts from it: 0.25 s instead of 0.37 s per 5-fold lite0 ensemble.
    The layout pass, specific to the CPU's vector width, still runs when each session starts, so a cached
    graph stays valid when the folder moves to another machine."""
    import onnxruntime as ort
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(Path(tmp) / "optimised.onnx")
        ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        return Path(options.optimized_model_filepath).read_bytes()


def build_graph(bundle: Bundle) -> bytes:
    return optimise_graph(export_ensemble(bundle))


def expected_graph(bundle: Bundle) -> str | None:
    """The sha256 the manifest records for this bundle's graph on these library versions, or None."""
    record = bundle.manifest.get("onnx")
    if isinstance(record, dict) and record.get("versions") == versions() and isinstance(record.get("sha256"), str):
        return record["sha256"]
    return None


def cached_graph(bundle: Bundle) -> tuple[bytes | None, str, str]:
    """(the verified cached graph or None, status, what that means), without exporting anything.
    Status: verified, unrecorded, missing or mismatch."""
    expected = expected_graph(bundle)
    if expected is None:
        return None, "unrecorded", "no graph recorded in the manifest for these library versions: exported on every run"
    path = cache_dir() / f"{expected}.onnx"
    try:
        data = path.read_bytes()
    except OSError:
        return None, "missing", f"not cached yet: exported on the first run and cached in {path.parent}"
    if hashlib.sha256(data).hexdigest() != expected:
        return None, "mismatch", f"{path} does not hash to the bundle's record: exported again and replaced"
    return data, "verified", f"cached and verified ({path})"


def _store(data: bytes, digest: str) -> None:
    try:
        with atomic_path(cache_dir() / f"{digest}.onnx") as tmp:
            Path(tmp).write_bytes(data)
    except OSError as e:
        log.info("ONNX graph not cached (%s); it is exported again on the next run", e)


def onnx_ensemble(bundle: Bundle, threads: int) -> OnnxEnsemble:
    """The bundle's graph from the cache when it verifies, else exported from the verified weights."""
    data, status, found = cached_graph(bundle)
    if data is None:
        if status == "mismatch":
            log.warning("%s", found)
        data = build_graph(bundle)
        digest = hashlib.sha256(data).hexdigest()
        if digest == expected_graph(bundle):
            _store(data, digest)
    return OnnxEnsemble(data, threads, bundle.task.kind)


def record_graph(folder: Path) -> None:
    """Export the bundle's graph, record its sha256 and the library versions in the manifest, and cache it
    (called by ``export``). Without ONNX, or when the export fails, the bundle simply has no record."""
    if unavailable_reason() is not None:
        return
    bundle = load_bundle(folder)
    try:
        data = build_graph(bundle)
    except Exception as e:  # noqa: BLE001  (run.py falls back to PyTorch for such a network anyway)
        log.warning("%s: no ONNX graph recorded (%s: %s); run.py will use PyTorch", folder, type(e).__name__, e)
        return
    digest = hashlib.sha256(data).hexdigest()
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    manifest["onnx"] = {"sha256": digest, "versions": versions()}
    write_json(folder / MANIFEST, manifest)
    _store(data, digest)


def select_engine(bundle: Bundle, backend: str, device: torch.device, channels_last: bool = True,
                  precision: str = "fp32"):
    """What runs the forward pass: ONNX Runtime for fp32 on CPU when asked or available, else the PyTorch
    ensemble (the only one with bf16/fp16 autocast).

    Returns (engine, note); the note says why PyTorch was used when ONNX was wanted. The PyTorch
    ensemble's memory layout is set here, after any export (which needs the contiguous layout). A bundle
    whose checkpoints cannot be read raises BundleError.
    """
    note = None
    if device.type == "cpu" and backend != "torch" and precision == "fp32":
        reason = unavailable_reason()
        if reason is None:
            try:
                return onnx_ensemble(bundle, torch.get_num_threads()), None
            except BundleError:
                raise
            except Exception as e:  # any export or runtime failure: PyTorch gives the same answers, slower
                reason = f"export failed ({type(e).__name__}: {e})"
        note = f"ONNX Runtime not used for {bundle.name}: {reason}; falling back to PyTorch"
    elif backend == "onnx":
        note = (f"ONNX Runtime backend is for CPU; using PyTorch on {device}" if device.type != "cpu"
                else f"ONNX Runtime backend runs fp32 only; using PyTorch for {precision}")
    return bundle.ensemble.set_layout(torch.channels_last if channels_last else torch.contiguous_format), note
