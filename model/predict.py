"""Predict a test folder with a bundle: list images, decode in workers, batched TTA, decision rule, CSV.

An image that cannot be decoded still gets a row, predicted from the bundle's class prior, and is
reported; one bad file never loses the rest of the work.
"""
from __future__ import annotations

import csv
import io
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .atomic import write_text
from .bundle import Bundle
from .device import autocast
from .images import ImageReadError, is_image_file, load_rgb, prepare
from .onnx_backend import select_engine

log = logging.getLogger(__name__)
ID_COLUMNS = ("id", "img_name")
IGNORED_NAMES = {"thumbs.db", "desktop.ini"}


@dataclass
class TestImage:
    id: int
    path: Path


@dataclass
class FolderListing:
    images: list[TestImage]
    problems: list[str] = field(default_factory=list)


def list_test_images(folder: str | Path) -> FolderListing:
    """Images sorted by the number in their name; id = that number.

    Names that are not numbers, and a second file with an id already taken (0001.jpg beside 0001.png),
    are still predicted: sorted after the numbered ones and given the next free ids, and reported.
    """
    folder = Path(folder)
    numbered, others, problems = [], [], []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.name.lower() in IGNORED_NAMES or path.is_dir():
            continue
        if not is_image_file(path):
            problems.append(f"{path}: not an image (jpg/jpeg/png/bmp), ignored")
            continue
        (numbered if re.fullmatch(r"\d+", path.stem) else others).append(path)
    numbered.sort(key=lambda p: (int(p.stem), p.suffix.lower(), p.name))
    images, taken = [], set()
    for path in numbered:
        if int(path.stem) in taken:
            others.append(path)
        else:
            taken.add(int(path.stem))
            images.append(TestImage(int(path.stem), path))
    next_id = max(taken, default=0) + 1
    for path in sorted(others, key=lambda p: p.name):
        images.append(TestImage(next_id, path))
        why = "id already taken by another file" if re.fullmatch(r"\d+", path.stem) else "name is not a number"
        problems.append(f"{path}: {why}; predicted with id {next_id}")
        next_id += 1
    return FolderListing(images, problems)


class _Decoded(Dataset):
    def __init__(self, paths: list[Path], size: int):
        self.paths, self.size = paths, size

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            img = prepare(load_rgb(self.paths[i]), self.size)
            return torch.from_numpy(img).permute(2, 0, 1), ""
        except ImageReadError as e:
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), str(e)
        except Exception as e:  # anything else about one file must not stop the run either
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), f"{self.paths[i]}: {e!r}"


@dataclass
class Prediction:
    probs: np.ndarray           # (N, heads), averaged over TTA views and folds
    failed: dict[int, str]      # index -> reason, for images that could not be decoded


def _decode_worker_init(worker_id: int) -> None:
    # The main process owns the cores for the forward pass; a decode worker keeps OpenCV to one thread.
    cv2.setNumThreads(1)


def auto_batch_size(device: torch.device, tta=None) -> int:
    """Images per batch. On CPU about 4 images per forward (TTA views included) run fastest: larger
    batches fall out of cache (lite0 at 224 px: 6 ms/image at 4 per forward, 15 ms at 32)."""
    if device.type == "cuda":
        return 32
    return max(1, 4 // (len(tta) if tta is not None else 1))


def predict_paths(bundle: Bundle, paths: list[Path], device: torch.device, precision: str = "fp32",
                  batch_size: int = 2, workers: int = 0, tta=None, progress: bool = True,
                  channels_last: bool = True, engine=None) -> Prediction:
    """Averaged probabilities for ``paths``.

    ``engine`` runs the forward pass (default: the bundle's PyTorch ensemble in the chosen layout; see
    model.onnx_backend.select_engine). channels_last is faster on CPU (oneDNN) and CUDA alike and
    changes probabilities only by float rounding (a test holds it under 1e-5)."""
    loader = DataLoader(_Decoded(paths, bundle.img_size), batch_size=batch_size, num_workers=workers,
                        shuffle=False, pin_memory=device.type == "cuda", persistent_workers=False,
                        worker_init_fn=_decode_worker_init if workers > 0 else None)
    probs, failed, start = [], {}, 0
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if engine is None:
        engine, _ = select_engine(bundle, "torch", device, channels_last)
    with torch.inference_mode(), tqdm(total=len(paths), desc=bundle.task.name, unit="img",
                                      disable=not progress, leave=False) as bar:
        for images, errors in loader:
            images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            with autocast(device, precision):
                batch = engine.predict(images, tta)
            probs.append(batch.float().cpu().numpy())
            for offset, error in enumerate(errors):
                if error:
                    failed[start + offset] = error
            start += len(errors)
            bar.update(len(errors))
    out = np.concatenate(probs) if probs else np.zeros((0, bundle.task.num_outputs))
    for index in failed:
        out[index] = bundle.prior
    return Prediction(out.astype(np.float64), failed)


def format_csv(task_columns: tuple[str, ...], images: list[TestImage], labels: np.ndarray, id_column: str = "id") -> str:
    if id_column not in ID_COLUMNS:
        raise ValueError(f"id column must be one of {ID_COLUMNS}")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([id_column, *task_columns])
    labels = np.asarray(labels).reshape(len(images), -1)
    for image, row in zip(images, labels):
        writer.writerow([image.id if id_column == "id" else image.path.name, *[int(v) for v in row]])
    return buffer.getvalue()


def write_predictions(path: str | Path, task_columns, images, labels, id_column: str = "id") -> None:
    write_text(path, format_csv(task_columns, images, labels, id_column))
