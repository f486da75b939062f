"""Inference speed: run.py against (a) the naive loop and (b) the compute limit, measured in one run.

    python benchmarks/infer.py                 # quick: 2 x 24 images, about 2 minutes on 2 CPU cores
    python benchmarks/infer.py --images 120    # steadier figures, about 10 minutes there

A generated test folder (mixed png/jpg, 500-1200 px) per task and random-init bundles in the real
format (tf_efficientnet_lite0, --folds per task, hflip TTA) are timed three ways:

  run.py  the shipped path (run.main in this process, bundle loading included), with its default backend
          (ONNX Runtime on CPU; the bundles record their graph's hash, as exported bundles do, so the
          graph cached by a first run is trusted) and with --backend torch
  (a)     what most entries do: per image, PIL decode, then ttach.ClassificationTTAWrapper around each
          fold model, one forward per view
  (b)     the compute limit: the same engine's batched forward, run as run.py runs it (ONNX Runtime:
          one stream per core), on tensors already decoded and resized, at its fastest batch size

Each is repeated, interleaved, and the best time counts (this machine is noisy). Prints images per
second, the ratios to (a) and (b), whether the paths predict the same labels, and finally `python run.py`
in a fresh process (imports included) with its peak memory.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import ttach  # noqa: E402

import run  # noqa: E402
from model.bundle import load_bundle  # noqa: E402
from model.device import resolve_precision  # noqa: E402
from model.ensemble import make_tta  # noqa: E402
from model.export import export_bundle  # noqa: E402
from model.images import load_rgb, prepare  # noqa: E402
from model.network import create_network, normalisation  # noqa: E402
from model.onnx_backend import record_graph, select_engine  # noqa: E402
from model.predict import forward_batches, list_test_images  # noqa: E402
from model.synthetic import fake_ultrasound, save_image  # noqa: E402
from model.task import load_task  # noqa: E402

TASKS = {name: load_task(PROJECT / "tasks" / f"birads-{name}.yaml") for name in ("cla", "fea")}


def make_folder(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    for task in TASKS:
        for i in range(1, n + 1):
            h = int(rng.integers(500, 1201))
            w = int(rng.integers(500, 1201))
            ext = ".png" if i % 2 else ".jpg"
            save_image(root / task / f"{i:04d}{ext}", fake_ultrasound(i, (h, w), i % 6, border=h // 20))


def make_weights(root: Path, folds: int, size: int, backbone: str) -> None:
    mean, std = normalisation(backbone)
    for name, task in TASKS.items():
        checkpoints = []
        for fold in range(folds):
            torch.manual_seed(fold)
            net = create_network(backbone, len(task.heads))
            checkpoints.append({"task": name, "backbone": backbone, "heads": list(task.heads), "img_size": size,
                                "mean": mean, "std": std, "fold": fold, "epoch": 0, "score": 0.0,
                                "state_dict": net.state_dict()})
        prior = [1 / len(task.heads)] * len(task.heads)
        folder = export_bundle(root / name, checkpoints, {"task": task.to_dict(), "decision": task.neutral_rule(),
                                                          "prior": prior, "cv": {}})
        record_graph(folder)  # as train.py export does: run.py then trusts the cached graph by its hash


def naive(weights: Path, test_dir: Path, device: torch.device) -> dict[str, np.ndarray]:
    """Per image, per fold: ttach's wrapper, one forward per view (what most entries ship)."""
    out = {}
    for name, task in TASKS.items():
        bundle = load_bundle(weights / name, device)
        wrapped = [ttach.ClassificationTTAWrapper(net, ttach.aliases.hflip_transform(), merge_mode="mean")
                   for net in bundle.ensemble.nets]
        rows = []
        with torch.no_grad():
            for image in list_test_images(test_dir / name).images:
                x = torch.from_numpy(prepare(load_rgb(image.path), bundle.img_size)).permute(2, 0, 1)[None]
                x = bundle.ensemble.norm(x.to(device))
                # ttach averages logits; averaging probabilities would need its wrapper rewritten.
                probs = [task.kind.probabilities(model(x)) for model in wrapped]
                rows.append(torch.stack(probs).mean(0)[0].cpu().numpy())
        out[name] = task.decide(np.array(rows), bundle.rule)
    return out


def compute_limit(weights: Path, test_dir: Path, device: torch.device, batch_sizes, backend: str) -> tuple[float, int]:
    """Seconds for the batched ensemble forward alone (``backend`` torch or onnx, run as run.py runs it:
    ONNX Runtime with one stream per core), on tensors decoded and resized beforehand, at the fastest of
    ``batch_sizes``: (seconds, batch size)."""
    tta = make_tta("hflip")
    precision = resolve_precision(device)  # fp16 autocast on CUDA, as run.py; fp32 on CPU
    engines, images = {}, {}
    for name in TASKS:
        bundle = load_bundle(weights / name, device, lazy=True)
        engines[name] = select_engine(bundle, backend, device)[0]
        arrays = [prepare(load_rgb(i.path), bundle.img_size) for i in list_test_images(test_dir / name).images]
        images[name] = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous(
            memory_format=engines[name].input_format).to(device)
    best = None
    for batch_size in batch_sizes:
        total = 0.0
        for name, engine in engines.items():
            batches = [(images[name][i:i + batch_size], ()) for i in range(0, len(images[name]), batch_size)]
            with torch.inference_mode():
                list(forward_batches(engine, batches[:1], tta, device, precision))  # warm-up
                if device.type == "cuda":
                    torch.cuda.synchronize()
                started = time.perf_counter()
                for probs, _ in forward_batches(engine, batches, tta, device, precision):
                    probs.cpu()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                total += time.perf_counter() - started
        print(f"    (b) {backend} at {batch_size:>3} images per batch: {total:6.1f}s")
        if best is None or total < best[0]:
            best = (total, batch_size)
    return best


def time_run_py(weights: Path, test_dir: Path, out: Path, args, backend: str) -> float:
    started = time.perf_counter()
    run.main(["--weights", str(weights), "--test-dir", str(test_dir), "--out-dir", str(out), "--device", args.device,
              "--batch-size", str(args.batch_size), "--backend", backend, "--quiet"])
    return time.perf_counter() - started


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=24, help="images per task (default 24: a quick run)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=0, help="run.py's --batch-size (0 = its auto choice)")
    p.add_argument("--repeats", type=int, default=2, help="interleaved repeats; the best time of each counts")
    p.add_argument("--skip-naive", action="store_true")
    args = p.parse_args()
    device = torch.device(args.device)
    n = 2 * args.images
    best = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_folder(tmp / "test", args.images)
        make_weights(tmp / "weights", args.folds, args.size, args.backbone)
        print(f"{n} images ({args.images} per task), {args.folds} folds x 2 tasks of {args.backbone} at {args.size}px, "
              f"hflip TTA, device {device}, {torch.get_num_threads()} threads, best of {args.repeats}", flush=True)
        backends = ("auto", "torch") if device.type == "cpu" else ("torch",)
        if device.type == "cpu":  # the ONNX graph is exported once and cached, as on a second organiser run
            time_run_py(tmp / "weights", tmp / "test", tmp / "warm", args, "auto")
        for repeat in range(args.repeats):
            print(f"  repeat {repeat + 1}/{args.repeats}: run.py, compute limit{'' if args.skip_naive else ', naive loop'}",
                  flush=True)
            for backend in backends:
                seconds = time_run_py(tmp / "weights", tmp / "test", tmp / f"out-{backend}", args, backend)
                best[f"run.py --backend {backend}"] = min(best.get(f"run.py --backend {backend}", 1e9), seconds)
            for backend in backends:
                key = f"limit {'onnx' if backend == 'auto' else backend}"
                limit, batch = compute_limit(tmp / "weights", tmp / "test", device,
                                             (1, 2, 4) if device.type == "cpu" else (8, 32, 64),
                                             "onnx" if backend == "auto" else backend)
                if limit < best.get(key, (1e9,))[0]:
                    best[key] = (limit, batch)
            if not args.skip_naive:
                started = time.perf_counter()
                labels = naive(tmp / "weights", tmp / "test", device)
                best["naive"] = min(best.get("naive", 1e9), time.perf_counter() - started)
        limits = {backend: best.pop(f"limit {'onnx' if backend == 'auto' else backend}") for backend in backends}
        naive_time = best.pop("naive", None)
        print()
        for backend, (limit, batch) in limits.items():
            name = "ONNX Runtime" if backend == "auto" else "PyTorch channels-last"
            print(f"(b) compute limit, {name} (best batch {batch}): {limit:6.1f}s  {n / limit:6.2f} img/s")
        if naive_time:
            print(f"(a) naive loop (per image, ttach wrapper per fold): {naive_time:6.1f}s  {n / naive_time:6.2f} img/s")
        for name, seconds in best.items():
            limit = limits[name.split()[-1]][0]
            line = f"{name:<22} {seconds:6.1f}s  {n / seconds:6.2f} img/s  = {limit / seconds:.0%} of its (b)"
            if naive_time:
                line += f", {naive_time / seconds:.1f}x faster than (a)"
            print(line)
        if len(backends) > 1:
            ratio = best["run.py --backend torch"] / best["run.py --backend auto"]
            print(f"the PyTorch fallback (--backend torch) takes {ratio:.2f}x the time of ONNX Runtime")
        first = tmp / f"out-{backends[0]}"
        if not args.skip_naive:
            for t in TASKS:
                shipped = pd.read_csv(first / f"{t}_pre.csv").iloc[:, 1:].to_numpy()
                agree = (shipped.reshape(labels[t].shape) == labels[t]).mean()
                print(f"{t} labels agreeing with (a): {agree:.1%} ((a) averages logits over views, run.py probabilities)")
        for t in TASKS:
            if len(backends) > 1:
                same = (first / f"{t}_pre.csv").read_bytes() == (tmp / "out-torch" / f"{t}_pre.csv").read_bytes()
                print(f"{t}_pre.csv identical with --backend torch: {same}")
        # As the organiser runs it: a fresh interpreter, imports and bundle loading included. The child
        # reports its own peak, VmHWM (ru_maxrss would keep this big process's mark across the fork and exec).
        wrapper = ("import os, re, runpy, sys; sys.argv = sys.argv[1:]\n"
                   "try: runpy.run_path(sys.argv[0], run_name='__main__')\n"
                   "finally:\n"
                   "    if os.path.exists('/proc/self/status'):\n"
                   "        print('peak', *re.findall(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()))")
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-c", wrapper, str(PROJECT / "run.py"), "--weights", str(tmp / "weights"),
                                 "--test-dir", str(tmp / "test"), "--out-dir", str(tmp / "out-cli"), "--device",
                                 args.device, "--quiet"], check=True, capture_output=True, text=True)
        cli = time.perf_counter() - started
    peak = re.search(r"peak (\d+)", result.stdout)
    memory = f"peak memory {int(peak[1]) / 1024:.0f} MiB" if peak else "peak memory not readable here (no /proc)"
    print(f"python run.py in a fresh process: {cli:.1f}s  {n / cli:.2f} img/s (imports included), {memory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
