"""Exporting a bundle: fold checkpoints (fp16 weights) and the manifest written into a staging folder that
replaces the target at once, the bundle it replaces moved to a backup rather than deleted."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from .atomic import public_mode, write_json
from .checkpoint import CHECKPOINT_KEYS, network_from_checkpoint, save_checkpoint
from .errors import BundleError
from .manifest import BUNDLE_FORMAT, MANIFEST, manifest_task, sha256
from .network import CLASSIFIER


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
        task = manifest_task(manifest["task"], folder)
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
