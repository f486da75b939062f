"""The frozen bundle folder, as run.py serves it: fold checkpoints (model.checkpoint) and ``manifest.json``
(model.manifest), verified file by file before use, the fold ensemble (model.ensemble) built from them.
Inference reads only the bundle, so ``run.py`` serves any bundle with no task code. Exporting one is
model.export.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from .checkpoint import load_checkpoint, network_from_checkpoint
from .ensemble import FoldEnsemble
from .errors import BundleError
from .manifest import MANIFEST, verify_bundle
from .task import Task

PROJECT = Path(__file__).resolve().parents[1]
WEIGHTS_DIR = PROJECT / "model" / "weights"


@dataclass
class Bundle:
    """A verified bundle. The fold networks are read on first use of ``ensemble``: a run served by the
    cached ONNX graph never builds them."""

    task: Task
    folder: Path
    manifest: dict
    device: torch.device

    @cached_property
    def ensemble(self) -> FoldEnsemble:
        nets = []
        for entry in self.manifest["folds"]:
            ckpt = load_checkpoint(self.folder / entry["file"])
            if ckpt.get("img_size") != self.img_size or len(ckpt.get("heads", ())) != len(self.task.heads):
                raise BundleError(f"{self.folder / entry['file']}: made for {ckpt.get('img_size')} px and "
                                  f"{len(ckpt.get('heads', ()))} outputs, but the manifest says {self.img_size} px "
                                  f"and {len(self.task.heads)}; re-export the bundle")
            try:
                nets.append(network_from_checkpoint(ckpt))
            except (RuntimeError, KeyError, ValueError) as e:
                raise BundleError(f"{self.folder / entry['file']}: its weights do not fit the network the manifest "
                                  f"describes ({str(e).splitlines()[0]}); re-export the bundle") from e
        network = self.manifest["network"]
        ensemble = FoldEnsemble(nets, network["mean"], network["std"], self.task.kind, network["input_norm"])
        return ensemble.to(self.device).eval()

    @property
    def name(self) -> str:
        return self.task.name

    @property
    def img_size(self) -> int:
        return int(self.manifest["network"]["input_size"])

    @property
    def crop_border(self) -> bool:
        """Whether inputs are cropped to the content inside a dark frame before the resize."""
        return bool(self.manifest["network"]["crop_border"])

    @property
    def output_shape(self) -> tuple[int, ...]:
        """One image's output, from the manifest's outputs block: (channels,) or (channels, H, W)."""
        block = self.manifest["network"]["outputs"]
        return (int(block["channels"]), *map(int, block["spatial_shape"]))

    @property
    def rule(self) -> dict:
        return self.manifest["decision"]

    @property
    def prior(self) -> np.ndarray:
        return np.asarray(self.manifest["prior"], dtype=np.float64)


def load_bundle(folder: str | Path, device: torch.device | str = "cpu", lazy: bool = False) -> Bundle:
    """Verify the bundle in ``folder`` (its task parsed once); read its fold networks now, or on first use
    when ``lazy``."""
    folder = Path(folder)
    manifest, task = verify_bundle(folder)
    bundle = Bundle(task, folder, manifest, torch.device(device))
    if not lazy:
        bundle.ensemble  # noqa: B018  (reads the checkpoints, so a broken one is reported here)
    return bundle


def find_bundles(weights: str | Path) -> tuple[list[Path], list[str]]:
    """(bundle folders, problems) under ``weights``: the folder itself when it is a bundle, else each of
    its visible subfolders (one without a manifest is a problem: a bundle that went missing)."""
    weights = Path(weights)
    if (weights / MANIFEST).is_file():
        return [weights], []
    if not weights.is_dir():
        return [], [f"{weights}: weights folder not found"]
    folders, problems = [], []
    for sub in sorted(p for p in weights.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if (sub / MANIFEST).is_file():
            folders.append(sub)
        else:
            problems.append(f"{sub / MANIFEST}: no bundle here (restore it from git, re-export it, or remove the folder)")
    if not folders and not problems:
        problems.append(f"{weights}: no bundle here (a folder with {MANIFEST}, or folders of them)")
    return folders, problems
