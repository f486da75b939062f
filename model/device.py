"""The device and precision in one place: CPU and CUDA take the same code path."""
from __future__ import annotations

import os
from contextlib import nullcontext

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


class DeviceError(ValueError):
    """A device or precision that this machine cannot give."""


def cpu_cores() -> int:
    """The cores this process may run on (its affinity, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def spare_cores(workers: int, device: torch.device, most_on_cpu: int) -> int:
    """Helper threads or processes: as asked, or for -1 every core but one, at most 16 on CUDA (where the
    GPU waits on them) and at most ``most_on_cpu`` on CPU (where the model itself needs the cores)."""
    if workers >= 0:
        return workers
    return max(0, min(16 if device.type == "cuda" else most_on_cpu, cpu_cores() - 1))


def decode_threads(workers: int, device: torch.device) -> int:
    """Image decoding threads for prediction: at most 4 on CPU."""
    return spare_cores(workers, device, most_on_cpu=4)


def device_list(name: str) -> list[str]:
    """The devices of a comma list, one per job in turn: ``cuda:0,1,2,3`` (or ``cuda:0,cuda:1``) is four
    GPUs, ``cpu,cpu`` two CPU jobs; a single device is a list of one. Each is checked by resolve_device."""
    items = [item.strip() for item in str(name).split(",") if item.strip()]
    if not items:
        raise DeviceError(f"device {name!r}: use auto, cpu, cuda, cuda:N or a list such as cuda:0,1")
    out, prefix = [], ""
    for item in items:
        if item.isdigit() and prefix == "cuda":
            item = f"cuda:{item}"
        prefix = item.split(":")[0]
        resolve_device(item)
        out.append(item)
    return out


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` (the GPU when there is one), ``cpu``, ``cuda`` or ``cuda:N``; DeviceError when this machine
    has no such device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise DeviceError(f"device {name!r}: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(f"device {name} asked for, but PyTorch sees no CUDA GPU here; use --device cpu")
        if device.index is not None and device.index >= count:
            raise DeviceError(f"device {name} asked for, but this machine has {count} GPU(s): cuda:0..cuda:{count - 1}")
    return device


def resolve_precision(device: torch.device, precision: str = "auto", training: bool = False) -> str:
    """fp16 on CUDA (bf16 where the GPU supports it when training); fp32 on CPU unless asked."""
    if precision != "auto":
        if precision == "fp16" and device.type == "cpu":
            raise DeviceError("fp16 autocast is for CUDA; on CPU use bf16 or fp32")
        return precision
    if device.type == "cuda":
        return "bf16" if training and torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
