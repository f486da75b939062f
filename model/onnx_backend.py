"""An optional ONNX Runtime backend for CPU inference, with automatic fallback to PyTorch.

The whole fold ensemble (normalisation, every fold, softmax/sigmoid, the mean) is exported to one ONNX
graph; a batch's TTA views go through it in one ``session.run``. On the 2-core dev CPU, ONNX Runtime runs
tf_efficientnet_lite0 faster than PyTorch in fp32 (benchmarks/infer.py measures by how much), with
probabilities within 1e-6 of it (tests hold the difference under 1e-4).

Trust: a graph is code ONNX Runtime will run, so nothing unverified is loaded. The export is
deterministic for given weights and library versions, so ``export`` records the graph's sha256 (and those
versions) in the manifest. run.py looks for graphs in a cache outside the bundle (``$HARNESS_CACHE_DIR``,
else ``$XDG_CACHE_HOME/medical-harness`` or ``~/.cache/medical-harness``), so a read-only or zipped
submission folder stays clean. First choice: ``<recorded sha256>.onnx``, used when its bytes hash to the
manifest's record. Else the graph this machine built: the export of another machine's libraries or CPU
need not be byte-identical to the recorded one, so a graph exported here from the verified weights is
cached as ``<key>.onnx`` with its own sha256 in ``<key>.json``, where the key is a sha256 over what the
graph was built from (the weight files' verified sha256s, the manifest's network and task blocks, the
library versions, the export settings). It is loaded only when its bytes hash to that sidecar; otherwise
(missing, truncated, doctored) the graph is exported again from the verified weights (a few seconds) and
the cache repaired. Only an unwritable cache makes every run export.
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
from .bundle import Bundle, load_bundle
from .ensemble import merge_views, tta_views
from .errors import BundleError
from .manifest import MANIFEST

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


def unusable_reason(bundle: Bundle) -> str | None:
    """None when this bundle's ensemble can run as an ONNX graph here, else why not: ONNX missing, or a kind
    whose ensemble holds a step no graph can (the detection kind's box fusion)."""
    return unavailable_reason() or bundle.task.kind.onnx_blocker(bundle.task)


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


# Everything besides the weights that shapes the exported bytes; part of the local cache key.
EXPORT_SETTINGS = {"scheme": 1, "opset": OPSET, "exporter": "torchscript", "inputs": ["images"], "outputs": ["probs"],
                   "dynamic_axes": "batch", "dummy": [2, 3, "input_size", "input_size"], "optimisation": "extended"}


def graph_key(bundle: Bundle) -> str:
    """A sha256 over what this bundle's graph is built from: the weight files' sha256s as the manifest
    lists them (load_bundle verified each file against them), the manifest's network and task blocks, the
    library versions and the export settings."""
    import onnx
    source = {"weights": [entry["sha256"] for entry in bundle.manifest["folds"]],
              "network": bundle.manifest["network"], "task": bundle.manifest["task"],
              "versions": versions(), "onnx": onnx.__version__, "export": EXPORT_SETTINGS}
    return hashlib.sha256(json.dumps(source, sort_keys=True, ensure_ascii=True).encode()).hexdigest()


def _read_verified(path: Path, digest) -> tuple[bytes | None, bool]:
    """(the bytes at ``path`` when they hash to ``digest``, else None; whether a file was there)."""
    try:
        data = path.read_bytes()
    except OSError:
        return None, False
    if isinstance(digest, str) and hashlib.sha256(data).hexdigest() == digest:
        return data, True
    return None, True


def _sidecar_digest(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("sha256")
    except (OSError, ValueError, AttributeError):
        return None


def cache_writable() -> bool:
    """Whether a graph could be cached now (the cache folder, or its nearest existing parent, takes a file)."""
    folder = cache_dir()
    if folder.is_dir():
        try:
            fd, tmp = tempfile.mkstemp(prefix=".probe.", dir=folder)
        except OSError:
            return False
        os.close(fd)
        os.unlink(tmp)
        return True
    parent = folder
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return parent.is_dir() and os.access(parent, os.W_OK | os.X_OK)


def cached_graph(bundle: Bundle) -> tuple[bytes | None, str, str]:
    """(the verified cached graph or None, status, what the next run does), without exporting anything.
    Status: verified, missing (exported and cached), mismatch (a cached file failed its check: exported
    again and replaced) or unwritable (exported on every run)."""
    folder = cache_dir()
    damaged = []
    expected = expected_graph(bundle)
    if expected is not None:
        path = folder / f"{expected}.onnx"
        data, present = _read_verified(path, expected)
        if data is not None:
            return data, "verified", (f"cached and verified against the manifest's record ({path}): "
                                      "the next run loads it")
        if present:
            damaged.append(f"{path} does not hash to the bundle's record")
    key = graph_key(bundle)
    path, sidecar = folder / f"{key}.onnx", folder / f"{key}.json"
    data, present = _read_verified(path, _sidecar_digest(sidecar))
    if data is not None:
        return data, "verified", (f"cached and verified (built on this machine from the verified weights: {path}): "
                                  "the next run loads it")
    if present or sidecar.exists():
        damaged.append(f"{path} does not hash to its record {sidecar.name}")
    if not cache_writable():
        return None, "unwritable", f"cache folder {folder} is not writable: exported on every run"
    target = (str(path) if expected is None else
              f"{folder / f'{expected}.onnx'} when it matches the manifest's record, else at {path}")
    if damaged:
        return None, "mismatch", f"{'; '.join(damaged)}: exported again from the verified weights and cached at {target}"
    return None, "missing", f"not cached yet: exported from the verified weights on the next run and cached at {target}"


def _store(data: bytes, digest: str, key: str | None = None) -> None:
    """Cache ``data`` as ``<digest>.onnx`` (a graph matching the manifest's record) or, given ``key``, as
    ``<key>.onnx`` with its sha256 in ``<key>.json`` (graph first, so a sidecar never names a missing one)."""
    folder = cache_dir()
    try:
        with atomic_path(folder / f"{key or digest}.onnx") as tmp:
            Path(tmp).write_bytes(data)
        if key is not None:
            write_json(folder / f"{key}.json", {"sha256": digest, "versions": versions()})
    except OSError as e:
        log.info("ONNX graph not cached (%s); it is exported again on the next run", e)


def onnx_ensemble(bundle: Bundle, threads: int) -> OnnxEnsemble:
    """The bundle's graph from the cache when it verifies, else exported from the verified weights and cached."""
    data, status, found = cached_graph(bundle)
    if data is None:
        if status == "mismatch":
            log.warning("%s", found)
        data = build_graph(bundle)
        digest = hashlib.sha256(data).hexdigest()
        if digest == expected_graph(bundle):
            _store(data, digest)
        else:
            _store(data, digest, key=graph_key(bundle))
    return OnnxEnsemble(data, threads, bundle.task.kind)


def record_graph(folder: Path) -> None:
    """Export the bundle's graph, record its sha256 and the library versions in the manifest, and cache it
    (called by ``export``). Without ONNX, or when the export fails, the bundle simply has no record."""
    bundle = load_bundle(folder)
    if unusable_reason(bundle) is not None:
        return
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
        reason = unusable_reason(bundle)
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
