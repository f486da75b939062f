"""Self-describing checkpoints, the frozen bundle folder and the fold ensemble.

A checkpoint carries everything needed to rebuild and use its network: backbone name, heads, input size,
normalisation, fold, epoch, score and weights. A bundle is a folder of fold checkpoints (fp16 weights) and
``manifest.json``: the whole task definition (model.task), the network and its input, the decision rule,
the class prior, the CV score, what it was trained on, and a sha256 per file. Inference reads only the
bundle, so ``run.py`` serves any bundle with no task code. A file whose hash does not match is refused, and
every path in a manifest must stay inside the bundle folder.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PurePosixPath

import numpy as np
import torch
import ttach
from torch import nn

from .atomic import atomic_path, public_mode, write_json
from .network import CLASSIFIER, NORM_SCOPES, InputNorm, create_network
from .task import Task, TaskFileError, load_task, task_from_dict

CHECKPOINT_FORMAT = "birads-checkpoint/1"
BUNDLE_FORMAT = "harness-bundle/4"
V3_FORMAT = "harness-bundle/3"
V2_FORMAT = "harness-bundle/2"
V1_FORMAT = "birads-bundle/1"
# What a bundle's checkpoint keeps: what rebuilds and describes the network, never the run's config.
CHECKPOINT_KEYS = ("task", "architecture", "outputs", "backbone", "heads", "img_size", "mean", "std", "input_norm",
                   "fold", "epoch", "score")
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 1 << 20    # a real manifest is a few kB; anything near this is not one
PROJECT = Path(__file__).resolve().parents[1]
WEIGHTS_DIR = PROJECT / "model" / "weights"

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
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or not isinstance(ckpt.get("state_dict"), dict):
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


class FoldEnsemble(nn.Module):
    """Fold networks with their input normalisation; uint8 images in, averaged probabilities out."""

    name = "pytorch"

    def __init__(self, nets: list[nn.Module], mean, std, kind, input_norm: str = "backbone"):
        super().__init__()
        self.nets = nn.ModuleList(nets)
        self.kind = kind
        self.norm = InputNorm(mean, std, input_norm)
        self.input_format = torch.contiguous_format  # the layout predict() wants; see set_layout

    def set_layout(self, memory_format: torch.memory_format) -> "FoldEnsemble":
        """Weights and expected inputs in ``memory_format`` (channels_last is faster on CPU and CUDA)."""
        self.input_format = memory_format
        return self.to(memory_format=memory_format)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.norm(images)
        return torch.stack([self.kind.probabilities(n(x)) for n in self.nets]).float().mean(0)

    def predict(self, images: torch.Tensor, tta: ttach.Compose | None = None) -> torch.Tensor:
        """Probabilities averaged over TTA views and folds; all views go through in one batch."""
        if tta is None:
            return self(images)
        return merge_views(self.kind, tta, self(tta_views(images, tta)), len(images))


def tta_views(images: torch.Tensor, tta: ttach.Compose) -> torch.Tensor:
    """Every TTA view of a batch, view after view, as one batch."""
    return torch.cat([t.augment_image(images) for t in tta])


def merge_views(kind, tta: ttach.Compose, outputs: torch.Tensor, n: int) -> torch.Tensor:
    """The mean over TTA views of each image's outputs, every view first turned back to the original
    frame by the kind (a flipped mask is flipped back; a class probability stays as it is)."""
    views = outputs.view(len(tta), n, *outputs.shape[1:])
    return torch.stack([kind.deaugment(t, view) for t, view in zip(tta, views)]).mean(0)


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


def read_manifest(folder: str | Path) -> dict:
    """The manifest of the bundle in ``folder``, checked in every field run.py relies on; a manifest of an
    earlier format (v1 BI-RADS, v2, v3) is upgraded in memory, one format at a time."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise BundleError(f"{path}: no bundle here. Train and export one (python train.py export RUN_DIR) "
                          "or restore model/weights from git.")
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{path}: {path.stat().st_size} bytes, more than a manifest holds "
                              f"({MAX_MANIFEST_BYTES}); re-export the bundle")
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except BundleError:
        raise
    except OSError as e:
        raise BundleError(f"{path}: cannot read the manifest ({e.strerror or e}); check its permissions") from e
    except RecursionError as e:
        raise BundleError(f"{path}: nested too deeply to be a manifest; re-export the bundle") from e
    except ValueError as e:  # bad UTF-8, bad JSON, an integer of thousands of digits
        raise BundleError(f"{path}: not valid UTF-8 JSON ({e}); re-export the bundle") from e
    if isinstance(manifest, dict) and manifest.get("format") == V1_FORMAT:
        manifest = _upgrade_v1(manifest, path)
    if isinstance(manifest, dict) and manifest.get("format") == V2_FORMAT:
        manifest = _upgrade_v2(manifest, path)
    if isinstance(manifest, dict) and manifest.get("format") == V3_FORMAT:
        manifest = _upgrade_v3(manifest)
    return validate_manifest(manifest, folder)


def _upgrade_v1(old: dict, path: Path) -> dict:
    """A birads-bundle/1 manifest (before task files) as a harness-bundle/2 one. Those bundles were the
    BI-RADS cla and fea tasks, whose definitions are the project's task files."""
    name = old.get("task")
    task_file = PROJECT / "tasks" / f"birads-{name}.yaml"
    if name not in ("cla", "fea") or not task_file.is_file():
        raise BundleError(f"{path}: a {V1_FORMAT} manifest for task {name!r}, which this version cannot place; "
                          "re-export the bundle from its run folder (python train.py export RUN_DIR)")
    try:
        network = {"backbone": old["backbone"], "input_size": old["img_size"], "mean": old["mean"], "std": old["std"]}
        return {"format": V2_FORMAT, "task": load_task(task_file).to_dict(), "network": network,
                **{k: old[k] for k in ("decision", "prior", "folds")},
                **{k: old[k] for k in ("cv", "trained_on") if k in old}, "upgraded_from": V1_FORMAT}
    except KeyError as e:
        raise BundleError(f"{path}: {V1_FORMAT} manifest without {e}; re-export the bundle") from e


def _upgrade_v2(old: dict, path: Path) -> dict:
    """A harness-bundle/2 manifest (classification only, before the network said what it outputs) as a
    harness-bundle/3 one (upgraded on to 4 next): a classifier with one output per head, on the frame-cropped input."""
    network = old.get("network")
    try:
        task = task_from_dict(old.get("task"), f"{path}: task", training=False)
    except TaskFileError as e:
        raise BundleError(f"{e}; re-export the bundle") from e
    if not isinstance(network, dict):
        return old
    size = network.get("input_size")
    return {**old, "format": V3_FORMAT, "upgraded_from": old.get("upgraded_from", V2_FORMAT),
            "network": {**network, "architecture": CLASSIFIER, "crop_border": True,
                        "outputs": task.kind.output_block(task, size)}}


def _upgrade_v3(old: dict) -> dict:
    """A harness-bundle/3 manifest (before input_norm) as a harness-bundle/4 one: its networks were all
    trained on the backbone's mean and std. The format changed so that a harness from before input_norm
    refuses a bundle whose images must be normalised one by one, rather than normalising them wrongly."""
    network = old.get("network")
    if not isinstance(network, dict):
        return old
    return {**old, "format": BUNDLE_FORMAT, "upgraded_from": old.get("upgraded_from", V3_FORMAT),
            "network": {"input_norm": "backbone", **network}}


def validate_manifest(manifest, folder: Path) -> dict:
    """Raise BundleError naming the manifest and the first field that is missing or of the wrong shape."""
    where = folder / MANIFEST

    def fail(message: str):
        raise BundleError(f"{where}: {message}; re-export the bundle")

    if not isinstance(manifest, dict):
        fail(f"expected a JSON object, found {type(manifest).__name__}")
    if manifest.get("format") != BUNDLE_FORMAT:
        fail(f"format {manifest.get('format')!r} is not {BUNDLE_FORMAT}")
    try:
        task = task_from_dict(manifest.get("task"), f"{where}: task", training=False)
    except TaskFileError as e:
        raise BundleError(f"{e}; re-export the bundle") from e
    n = len(task.heads)
    network = manifest.get("network")
    if not isinstance(network, dict) or not isinstance(network.get("backbone"), str):
        fail("network.backbone missing")
    size = network.get("input_size")
    if not isinstance(size, int) or isinstance(size, bool) or not 8 <= size <= 4096:
        fail(f"network.input_size {size!r} is not a size in pixels")
    for key in ("mean", "std"):
        values = network.get(key)
        if not _numbers(values, 3) or (key == "std" and min(values) <= 0):
            fail(f"network.{key} {values!r} is not three numbers")
    if network.get("input_norm") not in NORM_SCOPES:
        fail(f"network.input_norm {network.get('input_norm')!r} is not one of {', '.join(NORM_SCOPES)}")
    if not isinstance(network.get("architecture"), str) or not isinstance(network.get("crop_border"), bool):
        fail("network.architecture or network.crop_border missing")
    outputs = network.get("outputs")
    expected = task.kind.output_block(task, size)
    if not isinstance(outputs, dict) or any(outputs.get(k) != expected[k] for k in ("type", "channels", "spatial_shape")):
        fail(f"network.outputs {outputs!r} does not describe what a {task.kind.name} task's network emits "
             f"({ {k: expected[k] for k in ('type', 'channels', 'spatial_shape')} })")
    rule = manifest.get("decision")
    if not task.kind.check_rule(rule, n):
        shape = ", ".join(f"{k!r}: {len(v)} numbers" for k, v in task.kind.neutral_rule(n).items())
        fail(f"decision {rule!r} is not {{{shape}}} for a {task.kind.name} task")
    prior = manifest.get("prior")
    if not _numbers(prior, n) or min(prior) < 0 or max(prior) > 1:
        fail(f"prior {prior!r} is not {n} probabilities")
    folds = manifest.get("folds")
    if not isinstance(folds, list) or not folds:
        fail("folds is not a non-empty list of weight files")
    for entry in folds:
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or not isinstance(entry.get("sha256"), str):
            fail(f"fold entry {entry!r} lacks file or sha256")
        inside_bundle(folder, entry["file"])
    return manifest


def _numbers(values, n: int) -> bool:
    return (isinstance(values, list) and len(values) == n
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in values))


def inside_bundle(folder: Path, name: str) -> Path:
    """``folder / name`` when that path stays inside ``folder`` (symbolic links resolved); BundleError else."""
    relative = PurePosixPath(name)
    path = (folder / name).resolve()
    if relative.is_absolute() or ".." in relative.parts or "\\" in name or not path.is_relative_to(folder.resolve()):
        raise BundleError(f"{folder / MANIFEST}: file entry {name!r} points outside the bundle folder; refused")
    return path


def verify_bundle(folder: str | Path) -> dict:
    """Check the manifest and every weight file's sha256; return the manifest."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    for entry in manifest["folds"]:
        path = inside_bundle(folder, entry["file"])
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
    task = task_from_dict(manifest["task"], f"{folder / MANIFEST}: task", training=False)
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


def export_bundle(folder: str | Path, checkpoints: list[dict], manifest: dict, replace: bool = False,
                  backups: Path | None = None) -> Path:
    """Write fold checkpoints (fp16) and the manifest into ``folder`` at once.

    ``checkpoints``: loaded checkpoint dicts, one per fold. ``manifest``: task, decision, prior, cv,
    trained_on, recipe, ...; the network fields are taken from the first checkpoint. An existing bundle
    in ``folder`` is replaced only when ``replace``; it is then moved into ``backups`` (if given), not deleted.
    """
    folder = Path(folder)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()  # an empty folder holds nothing to keep
    if folder.exists() and not (folder / MANIFEST).is_file():
        # --force replaces a bundle; a folder of the user's own is never moved away, even then.
        raise BundleError(f"{folder} already exists and holds no bundle (no {MANIFEST}); it is not replaced, "
                          "even with --force: choose another --out")
    if folder.exists() and not replace:
        raise BundleError(f"{folder} already holds a bundle; pass --force to replace it (the old one is kept "
                          f"in {backups or 'a backup folder'}), or choose another --out")
    folder.parent.mkdir(parents=True, exist_ok=True)
    first = checkpoints[0]
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        entries = []
        for ckpt in checkpoints:
            name = f"fold{ckpt['fold']}.pt"
            meta = {k: ckpt[k] for k in CHECKPOINT_KEYS if k in ckpt}
            save_checkpoint(staging / name, network_from_checkpoint(ckpt), meta, half=True)
            entries.append({"file": name, "fold": ckpt["fold"], "score": ckpt.get("score"),
                            "sha256": sha256(staging / name)})
        task = task_from_dict(manifest["task"], f"{folder}: task", training=False)
        network = {"backbone": first["backbone"], "architecture": first.get("architecture", CLASSIFIER),
                   "input_size": first["img_size"], "mean": first["mean"], "std": first["std"],
                   "input_norm": first.get("input_norm", "backbone"), "crop_border": task.kind.crop_border,
                   "outputs": task.kind.output_block(task, first["img_size"])}
        write_json(staging / MANIFEST, {"format": BUNDLE_FORMAT, **manifest, "network": network, "folds": entries})
        os.chmod(staging, public_mode(directory=True))  # mkdtemp makes 0700; a bundle is read by other users too
        if folder.exists():
            backup = (backups or folder.parent) / f"{folder.name}-{time.strftime('%Y%m%d-%H%M%S')}"
            backup.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(folder), str(backup))
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder

