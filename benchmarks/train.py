"""Training throughput against its limit: the train step alone, the loader alone, the full loop.

    python benchmarks/train.py                          # the default recipe on this machine's device
    python benchmarks/train.py --device cuda --steps 200 --augment cpu,device
    python benchmarks/train.py --backbone tf_efficientnet_lite2 --img-size 260 --batch-size 32

Synthetic ultrasound-like images (with a lesion box, so box-guided CutMix runs) and random weights: no data
and no weight files needed, and the speed is that of the real recipe. It prints, in one run:

* the step limit: the recipe's training step (the same ``Stepper`` that training runs: AMP, channels_last,
  AdamW, clipping, EMA) on batches already on the device, in images per second;
* for each augmentation path (``cpu``: albumentations in loader processes; ``device``: torch on the device
  from a cache held there) the loader alone, and the full loop (loader + step) as a ratio of the step limit,
  with the GPU's utilisation sampled during the loop on CUDA (torch.cuda.utilization, every 0.1 s).

Folds side by side (``train.py --jobs N``) print their folds per hour at the end of the run.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import model.kinds  # noqa: E402,F401  (registers the task kinds)
from model.device import resolve_device  # noqa: E402
from model.images import resize_square  # noqa: E402
from model.synthetic import fake_ultrasound  # noqa: E402
from model.task import load_task  # noqa: E402
from model.training.config import build_config  # noqa: E402
from model.training.dataset import EpochSampler, ImageCache, cache_size  # noqa: E402
from model.training.engine import Stepper, resolve_workers, training_batches  # noqa: E402

TASK = load_task(PROJECT / "tasks" / "birads-cla.yaml")


def synthetic_cache(n: int, img_size: int, scale: float) -> tuple[ImageCache, np.ndarray, np.ndarray]:
    """``n`` fake ultrasound images cached as training caches them, one lesion box each, and their labels."""
    size = cache_size(img_size, scale)
    heads = len(TASK.heads)
    train, evals, boxes = [], [], []
    for i in range(n):
        img = fake_ultrasound(i, (size, size), i % heads, border=size // 20)
        train.append(img)
        evals.append(resize_square(img, img_size))
        r = size // 12 + 2 * (i % heads)
        boxes.append(np.array([[size / 2 - r, size / 2 - r, size / 2 + r, size / 2 + r]], np.float32) / size)
    targets = np.eye(heads, dtype=np.float32)[np.arange(n) % heads]
    return ImageCache(np.stack(train), np.stack(evals), boxes), targets, np.ones_like(targets)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Utilisation:
    """The GPU's utilisation (%) sampled every 0.1 s while the block runs; None off CUDA."""

    def __init__(self, device: torch.device):
        self.device, self.samples, self.running = device, [], False

    def __enter__(self):
        if self.device.type == "cuda":
            self.running = True
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while self.running:
            try:
                self.samples.append(torch.cuda.utilization(self.device))
            except Exception:  # no NVML (pynvml) here: say so, do not fail the benchmark
                return
            time.sleep(0.1)

    def __exit__(self, *exc):
        if self.running:
            self.running = False
            self.thread.join()

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.samples)) if self.samples else None


def step_limit(cfg, targets, masks, device, steps: int, warmup: int) -> float:
    """Images per second of the training step on uint8 batches already on the device."""
    step = Stepper(TASK, cfg, targets, masks, steps + warmup, device)
    step.net.train()
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (cfg.batch_size, 3, cfg.img_size, cfg.img_size), dtype=torch.uint8,
                           generator=g).to(device)
    batch_targets = torch.from_numpy(targets[: cfg.batch_size]).to(device)
    batch_masks = torch.ones_like(batch_targets)
    for _ in range(warmup):
        step(images, batch_targets, batch_masks)
    synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step(images, batch_targets, batch_masks)
    synchronize(device)
    return steps * cfg.batch_size / (time.perf_counter() - started)


def batch_source(cfg, cache, targets, masks, device):
    """The training loop's own batch source over the whole cache, and its sampler."""
    sampler = EpochSampler(len(cache), len(cache) // cfg.batch_size * cfg.batch_size, cfg.seed, 0)
    return training_batches(cfg, cache, targets, masks, sampler, cfg.batch_size, device), sampler


def stream(loader, sampler, steps: int, first_epoch: int = 1):
    """``steps`` batches, epoch after epoch, as the training loop draws them."""
    done, epoch = 0, first_epoch
    while True:
        sampler.set_epoch(epoch)
        for batch in loader:
            yield batch
            done += 1
            if done == steps:
                return
        epoch += 1


def loader_alone(cfg, cache, targets, masks, device, steps: int, warmup: int) -> float:
    loader, sampler = batch_source(cfg, cache, targets, masks, device)
    for _ in stream(loader, sampler, warmup):  # workers started, kernels warmed
        pass
    started, seen = time.perf_counter(), 0
    for images, _, _ in stream(loader, sampler, steps, first_epoch=100):
        seen += len(images)
    synchronize(device)
    return seen / (time.perf_counter() - started)


def full_loop(cfg, cache, targets, masks, device, steps: int, warmup: int) -> tuple[float, float | None]:
    step = Stepper(TASK, cfg, targets, masks, steps + warmup, device)
    step.net.train()
    loader, sampler = batch_source(cfg, cache, targets, masks, device)
    for images, t, m in stream(loader, sampler, warmup):
        step(images, t, m)
    synchronize(device)
    with Utilisation(device) as busy:
        started, seen = time.perf_counter(), 0
        for images, t, m in stream(loader, sampler, steps, first_epoch=100):
            step(images, t, m)
            seen += len(images)
        synchronize(device)
        rate = seen / (time.perf_counter() - started)
    return rate, busy.mean


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--backbone", default=None, help="default: the recipe's")
    p.add_argument("--img-size", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--images", type=int, default=128, help="synthetic images in the cache (epochs repeat over them)")
    p.add_argument("--steps", type=int, default=12, help="timed steps per measurement (more on a GPU)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--workers", type=int, default=-1, help="loader processes for augment cpu (-1: the recipe's rule)")
    p.add_argument("--augment", default="cpu,device", help="comma list of the paths to time: cpu, device")
    p.add_argument("--precision", default="auto")
    p.add_argument("--compile", action="store_true", help="torch.compile the step (CUDA)")
    args = p.parse_args()
    device = resolve_device(args.device)
    overrides = {"pretrained": "none", "device": str(device), "workers": args.workers, "precision": args.precision,
                 "backbone": args.backbone, "img_size": args.img_size, "batch_size": args.batch_size,
                 "compile": args.compile}
    cfg = build_config(TASK, overrides=overrides)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    cache, targets, masks = synthetic_cache(args.images, cfg.img_size, cfg.cache_scale)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{cfg.backbone} {cfg.img_size}px, batch {cfg.batch_size}, {args.images} synthetic images, {device} ({name}), "
          f"loader workers {resolve_workers(cfg.workers, device)}")
    limit = step_limit(cfg, targets, masks, device, args.steps, args.warmup)
    print(f"{'train step on device-resident batches':<40} {limit:8.1f} img/s   (the limit)")
    for path in [a.strip() for a in args.augment.split(",") if a.strip()]:
        cfg.augment = path
        alone = loader_alone(cfg, cache, targets, masks, device, args.steps, args.warmup)
        rate, busy = full_loop(cfg, cache, targets, masks, device, args.steps, args.warmup)
        util = f", GPU busy {busy:.0f}%" if busy is not None else ""
        print(f"{'loader alone, augment ' + path:<40} {alone:8.1f} img/s   ({alone / limit:.2f}x the step)")
        print(f"{'full loop, augment ' + path:<40} {rate:8.1f} img/s   ({rate / limit:.0%} of the limit{util})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
