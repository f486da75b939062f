"""An optional ONNX Runtime backend for CPU inference, with automatic fallback to PyTorch.

The whole fold ensemble (normalisation, every fold, softmax/sigmoid, the mean) is exported once per
bundle to one ONNX graph; a batch's TTA views go through it in one ``session.run``. On the 2-core dev
CPU, ONNX Runtime runs tf_efficientnet_lite0 1.6-2x faster than PyTorch in fp32, with probabilities
within 1e-6 of it (tests hold the difference under 1e-4).

The export takes a few seconds, so the graph is cached beside the bundle in ``.onnx-cache/`` (ignored by
git), keyed by the manifest and the library versions; a read-only folder just skips the cache.
"""
from __future__ import annotations

import hashlib
import io
import logging
import tempfile
import warnings
from pathlib import Path

import torch

from .atomic import atomic_path
from .bundle import MANIFEST, Bundle, BundleError

log = logging.getLogger(__name__)
OPSET = 17
CACHE = ".onnx-cache"


def unavailable_reason() -> str | None:
    """None when ONNX export and ONNX Runtime can be used here, else why not."""
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
        import onnxruntime  # noqa: F401
    except ImportError as e:
        return f"{e.name} is not installed"
    return None


class OnnxEnsemble:
    """The same ``predict(images, tta)`` as FoldEnsemble, run by ONNX Runtime."""

    name = "onnxruntime"
    input_format = torch.contiguous_format  # NCHW: other layouts would be copied back before every run

    def __init__(self, model_bytes: bytes, threads: int):
        import onnxruntime as ort
        options = ort.SessionOptions()
        # ``threads`` single-threaded streams, each running its own batch (the session is thread-safe),
        # rather than one batch at a time on an intra-op pool: no barrier per operator and no spinning
        # pool threads starving the decode worker. On the 2-core dev CPU run.py took 12.8 s instead of
        # 13.8 s (pool, spinning off) and 17 s (pool, spinning on); see benchmarks/infer.py.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.streams = max(1, threads)
        self.session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])

    def predict(self, images: torch.Tensor, tta=None) -> torch.Tensor:
        views = torch.cat([t.augment_image(images) for t in tta]) if tta is not None else images
        probs = self.session.run(None, {"images": views.float().contiguous().numpy()})[0]
        return torch.from_numpy(probs).view(len(tta) if tta is not None else 1, images.shape[0], -1).mean(0)


def _cache_key(bundle: Bundle) -> str:
    import onnxruntime
    digest = hashlib.sha256((bundle.folder / MANIFEST).read_bytes())
    digest.update(f"{torch.__version__}/{onnxruntime.__version__}/{OPSET}".encode())
    return digest.hexdigest()[:16]


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


def onnx_ensemble(bundle: Bundle, threads: int) -> OnnxEnsemble:
    """Load the cached graph for ``bundle`` or export it (and try to cache it). A cached graph that ONNX
    Runtime cannot load (a truncated file, say) is exported again."""
    path = bundle.folder / CACHE / f"ensemble-{_cache_key(bundle)}.onnx"
    if path.is_file():
        try:
            return OnnxEnsemble(path.read_bytes(), threads)
        except Exception as e:  # noqa: BLE001  (ONNX Runtime raises its own exception types)
            log.warning("%s: cached ONNX graph unusable (%s); exporting it again", path, e)
    data = optimise_graph(export_ensemble(bundle))
    try:
        for stale in path.parent.glob("ensemble-*.onnx"):
            stale.unlink()
        with atomic_path(path) as tmp:
            Path(tmp).write_bytes(data)
    except OSError as e:
        log.info("ONNX graph not cached (%s); it is exported again on the next run", e)
    return OnnxEnsemble(data, threads)


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
        note = f"ONNX Runtime not used for {bundle.task.name}: {reason}; falling back to PyTorch"
    elif backend == "onnx":
        note = (f"ONNX Runtime backend is for CPU; using PyTorch on {device}" if device.type != "cpu"
                else f"ONNX Runtime backend runs fp32 only; using PyTorch for {precision}")
    return bundle.ensemble.set_layout(torch.channels_last if channels_last else torch.contiguous_format), note
