"""One fold on several processes under torchrun: DistributedDataParallel, on the GPUs of one machine or of
several, or on CPU processes (gloo) for tests.

    torchrun --nproc_per_node 4 train.py --task T.yaml --data DIR --folds 0

Every process reads and decodes the data and builds the same network; each takes its shard of every epoch's
(seed, image) pairs, so the augmentation of an image does not depend on the number of processes and a
resumed fold repeats an uninterrupted one with the same number of processes. ``batch_size`` is per process;
the global batch is ``batch_size`` times the number of processes. DDP averages the gradients, so every
process holds the same weights after each step. Rank 0 alone writes: it makes the run folder and the folds,
fits the baseline, validates, keeps the EMA, saves checkpoints and the resume state, logs and summarises;
the others wait for it where they need what it wrote. Batch norm statistics stay per process (no
SyncBatchNorm, which needs a GPU), the one reason a run on N processes differs from one on one.
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

log = logging.getLogger("train")


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    local_rank: int

    @property
    def main(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """Whether this process was started by torchrun (or any launcher that sets WORLD_SIZE) with others."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def current() -> World | None:
    """This process's place, once the process group is up; None in a one-process run."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def device_for(requested: str) -> str:
    """The device of this process: its own GPU (LOCAL_RANK) when CUDA is asked for or available under auto,
    else the CPU."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if requested.startswith("cuda") or requested == "auto" and torch.cuda.is_available():
        return f"cuda:{local}"
    return "cpu"


@contextmanager
def process_group(device: str):
    """The process group for the duration (nccl on GPUs, gloo on CPUs); a no-op in a one-process run."""
    if not launched() or current() is not None:
        yield current()
        return
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(torch.device(device))
    # Rank 0 alone fits the baseline and writes the folds while the others wait: give it hours, not the
    # default 10 minutes of an NCCL collective.
    dist.init_process_group(backend, timeout=timedelta(hours=2))
    world = current()
    if not world.main:
        logging.getLogger().setLevel(logging.WARNING)   # rank 0 alone logs
    try:
        yield world
    finally:
        dist.destroy_process_group()


def is_main() -> bool:
    world = current()
    return world is None or world.main


def barrier() -> None:
    if current() is not None:
        dist.barrier()


@contextmanager
def main_first():
    """Rank 0 runs the block, then the others do (they find what it wrote): the folds file, a cache."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def agree(flag: bool) -> bool:
    """Rank 0's ``flag`` on every process (stop early, say)."""
    if current() is None:
        return flag
    # On the process's own GPU under nccl (which has no CPU tensors), on the CPU under gloo.
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([int(flag)], device=device)
    dist.broadcast(value, src=0)
    return bool(value.item())


def mean_over_processes(value: torch.Tensor) -> torch.Tensor:
    """The mean of a scalar over the processes (the training loss each process saw on its shard)."""
    if current() is None:
        return value
    out = value.detach().clone().float()
    dist.all_reduce(out)
    return out / dist.get_world_size()


def average_gradients(parameters) -> None:
    """Average the gradients of parameters that DDP does not own (a loss's learned task weights)."""
    world = current()
    if world is None:
        return
    for p in parameters:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world.size


def wrap(net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``net`` in DistributedDataParallel; ``net`` itself unchanged in a one-process run."""
    if current() is None:
        return net
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)


class ShardedSampler(Sampler):
    """This process's share of an epoch sampler's (seed, index) pairs: every ``size``-th from ``rank``.
    ``set_epoch`` moves the sampler on, so every process walks the same epoch."""

    def __init__(self, sampler, world: World):
        self.sampler, self.world = sampler, world

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        pairs = list(self.sampler)
        return iter(pairs[self.world.rank::self.world.size])

    def __len__(self) -> int:
        return len(self.sampler) // self.world.size
