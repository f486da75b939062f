"""Self-describing checkpoints: everything needed to rebuild and use a network (architecture, backbone,
heads, input size, normalisation, fold, epoch, score) beside its weights, loaded with ``weights_only``."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .atomic import atomic_path
from .errors import BundleError
from .network import CLASSIFIER, create_network

CHECKPOINT_FORMAT = "harness-checkpoint/1"
# The same content under the project's first name: bundles exported and runs saved before the rename.
EARLIER_FORMATS = ("birads-checkpoint/1",)
# What a bundle's checkpoint keeps: what rebuilds and describes the network, never the run's config.
CHECKPOINT_KEYS = ("task", "architecture", "outputs", "backbone", "heads", "img_size", "mean", "std", "input_norm",
                   "fold", "epoch", "score")


def save_checkpoint(path: str | Path, net: nn.Module, meta: dict, half: bool = False) -> None:
    """``meta`` must hold task, backbone, heads, img_size, mean, std (plus anything else worth keeping)."""
    missing = {"task", "backbone", "heads", "img_size", "mean", "std"} - set(meta)
    if missing:
        raise ValueError(f"checkpoint metadata lacks {sorted(missing)}")
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
             for k, v in net.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, **meta, "state_dict": state}, tmp)


def load_checkpoint(path: str | Path) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and torch errors all mean the same thing to the user
        raise BundleError(f"{path}: cannot read this checkpoint ({e}); re-export it") from e
    if (not isinstance(ckpt, dict) or ckpt.get("format") not in (CHECKPOINT_FORMAT, *EARLIER_FORMATS)
            or not isinstance(ckpt.get("state_dict"), dict)):
        raise BundleError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint")
    return ckpt


def network_from_checkpoint(ckpt: dict) -> nn.Module:
    # Built on the meta device: no time spent on a random initialisation the weights replace anyway.
    with torch.device("meta"):
        net = create_network(ckpt["backbone"], int(ckpt.get("outputs", len(ckpt["heads"]))), pretrained="none",
                             architecture=ckpt.get("architecture", CLASSIFIER))
    state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    net.load_state_dict(state, strict=True, assign=True)
    return net.eval()
