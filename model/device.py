"""The device and precision in one place: CPU and CUDA take the same code path."""
from __future__ import annotations

from contextlib import nullcontext

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name} asked for, but PyTorch sees no CUDA GPU here; use --device cpu")
    return torch.device(name)


def resolve_precision(device: torch.device, precision: str = "auto", training: bool = False) -> str:
    """fp16 on CUDA (bf16 where the GPU supports it when training); fp32 on CPU unless asked."""
    if precision != "auto":
        if precision == "fp16" and device.type == "cpu":
            raise RuntimeError("fp16 autocast is for CUDA; on CPU use bf16 or fp32")
        return precision
    if device.type == "cuda":
        return "bf16" if training and torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
