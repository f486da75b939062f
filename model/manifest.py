"""A bundle's ``manifest.json``: the whole task definition (model.task), the network and its input, the
decision rule, the class prior, the CV score, what it was trained on, and a sha256 per file.

Reading it checks every field run.py relies on and that every path in it stays inside the bundle folder; a
manifest of an earlier format is upgraded in memory, one format at a time, by the upgrades registered here
(the core's own, and the classification kinds' for the first BI-RADS bundles).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath
from typing import Callable

import numpy as np

from .errors import BundleError, TaskFileError
from .network import CLASSIFIER, NORM_SCOPES
from .task import Task, task_from_dict

BUNDLE_FORMAT = "harness-bundle/4"
V3_FORMAT = "harness-bundle/3"
V2_FORMAT = "harness-bundle/2"
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 1 << 20    # a real manifest is a few kB; anything near this is not one

# format -> the function that turns a manifest of that format into the next one (manifest, its path).
UPGRADES: dict[str, Callable[[dict, Path], dict]] = {}


def register_upgrade(old_format: str):
    """Register the decorated ``(manifest, path) -> manifest`` as the upgrade from ``old_format``."""
    def add(upgrade):
        UPGRADES[old_format] = upgrade
        return upgrade
    return add


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def numbers(values, n: int) -> bool:
    """Whether ``values`` is a list of ``n`` finite numbers (booleans are not numbers here)."""
    return (isinstance(values, list) and len(values) == n
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in values))


def read_manifest(folder: str | Path) -> dict:
    """The manifest of the bundle in ``folder``, checked in every field run.py relies on."""
    return checked_manifest(Path(folder))[0]


def checked_manifest(folder: Path) -> tuple[dict, Task]:
    """(the manifest in ``folder``, upgraded to the current format and checked, its task)."""
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
    seen = set()
    while isinstance(manifest, dict) and manifest.get("format") in UPGRADES and manifest["format"] not in seen:
        seen.add(manifest["format"])
        manifest = UPGRADES[manifest["format"]](manifest, path)
    return manifest, validate_manifest(manifest, folder)


def manifest_task(section, where) -> Task:
    """The task a manifest's ``task`` section describes; BundleError when it cannot be read."""
    try:
        return task_from_dict(section, f"{where}: task", training=False)
    except TaskFileError as e:
        raise BundleError(f"{e}; re-export the bundle") from e


@register_upgrade(V2_FORMAT)
def _upgrade_v2(old: dict, path: Path) -> dict:
    """A harness-bundle/2 manifest (classification only, before the network said what it outputs) as a
    harness-bundle/3 one (upgraded on to 4 next): a classifier with one output per head, on the frame-cropped input."""
    network = old.get("network")
    task = manifest_task(old.get("task"), path)
    if not isinstance(network, dict):
        return old
    size = network.get("input_size")
    return {**old, "format": V3_FORMAT, "upgraded_from": old.get("upgraded_from", V2_FORMAT),
            "network": {**network, "architecture": CLASSIFIER, "crop_border": True,
                        "outputs": task.kind.output_block(task, size)}}


@register_upgrade(V3_FORMAT)
def _upgrade_v3(old: dict, path: Path) -> dict:
    """A harness-bundle/3 manifest (before input_norm) as a harness-bundle/4 one: its networks were all
    trained on the backbone's mean and std. The format changed so that a harness from before input_norm
    refuses a bundle whose images must be normalised one by one, rather than normalising them wrongly."""
    network = old.get("network")
    if not isinstance(network, dict):
        return old
    return {**old, "format": BUNDLE_FORMAT, "upgraded_from": old.get("upgraded_from", V3_FORMAT),
            "network": {"input_norm": "backbone", **network}}


def validate_manifest(manifest, folder: Path) -> Task:
    """The manifest's task; BundleError naming the manifest and the first field that is missing or of the
    wrong shape."""
    where = folder / MANIFEST

    def fail(message: str):
        raise BundleError(f"{where}: {message}; re-export the bundle")

    if not isinstance(manifest, dict):
        fail(f"expected a JSON object, found {type(manifest).__name__}")
    if manifest.get("format") != BUNDLE_FORMAT:
        fail(f"format {manifest.get('format')!r} is not {BUNDLE_FORMAT}")
    task = manifest_task(manifest.get("task"), where)
    n = len(task.heads)
    network = manifest.get("network")
    if not isinstance(network, dict) or not isinstance(network.get("backbone"), str):
        fail("network.backbone missing")
    size = network.get("input_size")
    if not isinstance(size, int) or isinstance(size, bool) or not 8 <= size <= 4096:
        fail(f"network.input_size {size!r} is not a size in pixels")
    for key in ("mean", "std"):
        values = network.get(key)
        if not numbers(values, 3) or (key == "std" and min(values) <= 0):
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
    if not numbers(prior, n) or min(prior) < 0 or max(prior) > 1:
        fail(f"prior {prior!r} is not {n} probabilities")
    folds = manifest.get("folds")
    if not isinstance(folds, list) or not folds:
        fail("folds is not a non-empty list of weight files")
    for entry in folds:
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or not isinstance(entry.get("sha256"), str):
            fail(f"fold entry {entry!r} lacks file or sha256")
        inside_bundle(folder, entry["file"])
    return task


def inside_bundle(folder: Path, name: str) -> Path:
    """``folder / name`` when that path stays inside ``folder`` (symbolic links resolved); BundleError else."""
    relative = PurePosixPath(name)
    path = (folder / name).resolve()
    if relative.is_absolute() or ".." in relative.parts or "\\" in name or not path.is_relative_to(folder.resolve()):
        raise BundleError(f"{folder / MANIFEST}: file entry {name!r} points outside the bundle folder; refused")
    return path


def verify_bundle(folder: str | Path) -> tuple[dict, Task]:
    """Check the manifest and every weight file's sha256; return the manifest and its task."""
    folder = Path(folder)
    manifest, task = checked_manifest(folder)
    for entry in manifest["folds"]:
        path = inside_bundle(folder, entry["file"])
        if not path.is_file():
            raise BundleError(f"{path}: weight file listed in {MANIFEST} is missing; restore it or re-export")
        actual = sha256(path)
        if actual != entry["sha256"]:
            raise BundleError(f"{path}: sha256 {actual[:12]}… does not match the manifest ({entry['sha256'][:12]}…). "
                              "The file is corrupt or was changed after export: restore it from git or re-export.")
    return manifest, task
