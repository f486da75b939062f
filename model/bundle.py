"""Self-describing checkpoints, the frozen bundle under ``model/weights/<task>/`` and the fold ensemble.

A checkpoint carries everything needed to rebuild and use its network: backbone name, heads, input size,
normalisation, fold, epoch, score and weights. A bundle is a folder of fold checkpoints (fp16 weights) plus
``manifest.json`` with the decision rule, class prior, CV score and a sha256 per file. Inference reads
only the bundle: never a training config, never the network.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import ttach
from torch import nn

from .atomic import atomic_path, write_json
from .network import InputNorm, create_network
from .tasks import TASKS, Task

CHECKPOINT_FORMAT = "birads-checkpoint/1"
BUNDLE_FORMAT = "birads-bundle/1"
MANIFEST = "manifest.json"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

TTA_TRANSFORMS = {
    "hflip": ttach.HorizontalFlip,
    # Brightness changes; no rotations or vertical flips: they change "direction" and the skin line.
    "multiply": lambda: ttach.Multiply([0.9, 1.0, 1.1]),
}


class BundleError(ValueError):
    pass


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise BundleError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint")
    return ckpt


def network_from_checkpoint(ckpt: dict) -> nn.Module:
    # Built on the meta device: no time spent on a random initialisation the weights replace anyway.
    with torch.device("meta"):
        net = create_network(ckpt["backbone"], len(ckpt["heads"]), pretrained="none")
    state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    net.load_state_dict(state, strict=True, assign=True)
    return net.eval()


class FoldEnsemble(nn.Module):
    """Fold networks with their input normalisation; uint8 images in, averaged probabilities out."""

    name = "pytorch"

    def __init__(self, nets: list[nn.Module], mean, std, multilabel: bool):
        super().__init__()
        self.nets = nn.ModuleList(nets)
        self.multilabel = multilabel
        self.norm = InputNorm(mean, std)
        self.input_format = torch.contiguous_format  # the layout predict() wants; see set_layout

    def set_layout(self, memory_format: torch.memory_format) -> "FoldEnsemble":
        """Weights and expected inputs in ``memory_format`` (channels_last is faster on CPU and CUDA)."""
        self.input_format = memory_format
        return self.to(memory_format=memory_format)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.norm(images)
        probs = [torch.sigmoid(n(x)) if self.multilabel else torch.softmax(n(x), dim=-1) for n in self.nets]
        return torch.stack(probs).float().mean(0)

    def predict(self, images: torch.Tensor, tta: ttach.Compose | None = None) -> torch.Tensor:
        """Probabilities averaged over TTA views and folds; all views go through in one batch."""
        if tta is None:
            return self(images)
        views = torch.cat([t.augment_image(images) for t in tta])
        return self(views).view(len(tta), images.shape[0], -1).mean(0)


def make_tta(names: str) -> ttach.Compose | None:
    """``"none"``, or a comma list of TTA_TRANSFORMS names (e.g. ``"hflip"``, ``"hflip,multiply"``)."""
    wanted = [n.strip() for n in names.split(",") if n.strip() and n.strip() != "none"]
    unknown = [n for n in wanted if n not in TTA_TRANSFORMS]
    if unknown:
        raise ValueError(f"unknown TTA {unknown}; choose from none, {', '.join(TTA_TRANSFORMS)}")
    return ttach.Compose([TTA_TRANSFORMS[n]() for n in wanted]) if wanted else None


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
        nets = [network_from_checkpoint(load_checkpoint(self.folder / e["file"])) for e in self.manifest["folds"]]
        ensemble = FoldEnsemble(nets, self.manifest["mean"], self.manifest["std"], self.task.multilabel)
        return ensemble.to(self.device).eval()

    @property
    def img_size(self) -> int:
        return int(self.manifest["img_size"])

    @property
    def rule(self) -> dict:
        return self.manifest["decision"]

    @property
    def prior(self) -> np.ndarray:
        return np.asarray(self.manifest["prior"], dtype=np.float64)


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise BundleError(f"{path}: no bundle here. Train and export one (python -m train_cls export RUN_DIR, "
                          "python -m train_fea export RUN_DIR) or restore model/weights from git.")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise BundleError(f"{path}: not valid JSON ({e}); re-export the bundle") from e
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: not a {BUNDLE_FORMAT} manifest")
    return manifest


def verify_bundle(folder: str | Path) -> dict:
    """Check the manifest and every weight file's sha256; return the manifest."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    for entry in manifest["folds"]:
        path = folder / entry["file"]
        if not path.is_file():
            raise BundleError(f"{path}: weight file listed in {MANIFEST} is missing; restore it or re-export")
        actual = sha256(path)
        if actual != entry["sha256"]:
            raise BundleError(f"{path}: sha256 {actual[:12]}… does not match the manifest ({entry['sha256'][:12]}…). "
                              "The file is corrupt or was changed after export: restore it from git or re-export.")
    return manifest


def load_bundle(folder: str | Path, device: torch.device | str = "cpu", lazy: bool = False) -> Bundle:
    """Verify the bundle in ``folder``; read its fold networks now, or on first use when ``lazy``."""
    folder = Path(folder)
    manifest = verify_bundle(folder)
    if manifest.get("task") not in TASKS:
        raise BundleError(f"{folder / MANIFEST}: unknown task {manifest.get('task')!r}; expected one of {sorted(TASKS)}")
    bundle = Bundle(TASKS[manifest["task"]], folder, manifest, torch.device(device))
    if not lazy:
        bundle.ensemble  # noqa: B018  (reads the checkpoints, so a broken one is reported here)
    return bundle


def export_bundle(folder: str | Path, checkpoints: list[dict], manifest: dict) -> Path:
    """Write fold checkpoints (fp16) and the manifest into ``folder``, replacing any bundle there at once.

    ``checkpoints``: loaded checkpoint dicts, one per fold. ``manifest``: task-level fields (decision, prior,
    cv, trained_on, ...); architecture fields are taken from the first checkpoint.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    first = checkpoints[0]
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        entries = []
        for ckpt in checkpoints:
            name = f"fold{ckpt['fold']}.pt"
            meta = {k: v for k, v in ckpt.items() if k not in ("format", "state_dict")}
            net = network_from_checkpoint(ckpt)
            save_checkpoint(staging / name, net, meta, half=True)
            entries.append({"file": name, "fold": ckpt["fold"], "score": ckpt.get("score"),
                            "sha256": sha256(staging / name)})
        full = {"format": BUNDLE_FORMAT, **{k: first[k] for k in ("task", "backbone", "heads", "img_size", "mean", "std")},
                **manifest, "folds": entries}
        write_json(staging / MANIFEST, full)
        old = folder.with_name(f".{folder.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            folder.rename(old)
        staging.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
