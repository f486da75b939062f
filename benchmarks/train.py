"""Training throughput: the decoded-image cache and loader as shipped, against decoding every epoch.

    python benchmarks/train.py [--data DIR] [--images 96] [--epochs 2] [--workers 1] [--device cpu]

Both paths run the same TrainDataset, augmentation, DataLoader and training step (the default recipe:
tf_efficientnet_lite0, 224 px, batch 16, bf16 autocast where the CPU supports it); the only difference
is where an image comes from: the in-memory cache built once, or the file decoded at full size, frame
cropped and resized on every access. Prints images per second for the loader alone and for full
training steps, their ratios, and the cache's build time. On CUDA it also prints GPU utilisation.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from model.device import autocast, resolve_device  # noqa: E402
from model.network import InputNorm, create_network, normalisation  # noqa: E402
from model.readers import read_dataset  # noqa: E402
from model.task import load_task  # noqa: E402
from model.training.config import build_config  # noqa: E402
from model.training.dataset import TrainDataset, _decode, build_cache  # noqa: E402
from model.training.engine import training_precision  # noqa: E402

DEV = PROJECT.parent / "shared" / "data" / "breast-lesions-usg"
TASK = load_task(PROJECT / "tasks" / "birads-cla.yaml")


class DecodeEveryTime(Sequence):
    """The cache's interface, decoding the file at full size on every access."""

    def __init__(self, samples, img_size, cache_size):
        self.jobs = [(s, img_size, cache_size) for s in samples]

    def __len__(self):
        return len(self.jobs)

    def __getitem__(self, i):
        return _decode(self.jobs[i])


def loader_for(items, targets, masks, cfg, workers):
    dataset = TrainDataset(items, targets, masks, cfg.img_size, cfg.aug_strength, cfg.cutmix_p, cfg.seed)
    return DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, drop_last=True, num_workers=workers,
                      persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))


def time_loader(loader, epochs):
    started, seen = time.perf_counter(), 0
    for _ in range(epochs):
        for images, _, _ in loader:
            seen += len(images)
    return seen / (time.perf_counter() - started)


def time_training(loader, cfg, device, epochs):
    precision = training_precision(device, cfg.precision)
    norm = InputNorm(*normalisation(cfg.backbone)).to(device)
    net = create_network(cfg.backbone, len(TASK.heads), cfg.pretrained).to(device).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr)
    loss_fn = TASK.kind.make_loss(cfg, loader.dataset.targets, loader.dataset.masks).to(device)
    busy, seen, started = 0.0, 0, time.perf_counter()
    for _ in range(epochs):
        for images, targets, masks in loader:
            step = time.perf_counter()
            with autocast(device, precision):
                logits = net(norm(images.to(device)))
            loss = loss_fn(logits.float(), targets.to(device), masks.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            busy += time.perf_counter() - step
            seen += len(images)
    wall = time.perf_counter() - started
    return seen / wall, busy / wall, precision


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEV)
    p.add_argument("--images", type=int, default=96)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    if not args.data.is_dir():
        print(f"{args.data}: training data not found (pass --data)", file=sys.stderr)
        return 2
    device = resolve_device(args.device)
    cfg = build_config(TASK, overrides={"workers": args.workers})
    samples = read_dataset(TASK, args.data)[1].samples[: args.images]
    targets, masks = TASK.kind.encode([s.labels for s in samples], len(TASK.heads))
    started = time.perf_counter()
    cached, _ = build_cache(samples, cfg.img_size, cfg.cache_scale, args.workers)
    build = time.perf_counter() - started
    lazy = DecodeEveryTime(samples, cfg.img_size, max(cfg.img_size, round(cfg.img_size * cfg.cache_scale)))
    print(f"{len(samples)} images from {args.data.name}, {cfg.backbone} {cfg.img_size}px, batch {cfg.batch_size}, "
          f"{args.workers} loader worker(s), {args.epochs} epochs, device {device}; cache built in {build:.1f}s")
    rows = {}
    for name, items in (("cache (shipped)", cached), ("decode every epoch", lazy)):
        loader_rate = time_loader(loader_for(items, targets, masks, cfg, args.workers), args.epochs)
        train_rate, busy, precision = time_training(loader_for(items, targets, masks, cfg, args.workers), cfg, device,
                                                    args.epochs)
        rows[name] = (loader_rate, train_rate)
        print(f"{name:<20} loader alone {loader_rate:7.1f} img/s   training {train_rate:6.1f} img/s ({precision}), "
              f"compute busy {busy:.0%} of the time")
    (lc, tc), (ld, td) = rows["cache (shipped)"], rows["decode every epoch"]
    print(f"cache speed-up: loader {lc / ld:.1f}x, training {tc / td:.2f}x")
    if device.type == "cuda":
        print(f"GPU utilisation (nvidia-smi at the end): {torch.cuda.utilization(device)}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
