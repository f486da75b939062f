"""Predict a test folder with a bundle: list images, decode in threads, batched TTA; the task's kind then
applies the decision rule and writes the outputs (a CSV, or masks).

An image that cannot be decoded still gets a row (predicted from the bundle's class prior; an empty mask for
segmentation), and is reported; one bad file never loses the rest of the work.
"""
from __future__ import annotations

import itertools
import logging
import os
import re
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from .bundle import Bundle
from .device import autocast
from .images import ImageReadError, is_image_file, is_regular_file, load_rgb, prepare
from .onnx_backend import select_engine
from .task import ID_MODES

log = logging.getLogger(__name__)
IGNORED_NAMES = {"thumbs.db", "desktop.ini"}
READ_TIMEOUT = 60.0  # seconds one image file may take to read before it is given up (predicted from the prior)


@dataclass
class TestImage:
    __test__ = False  # a test image of the test set, not a pytest test class
    id: int
    path: Path

    @property
    def name(self) -> str:
        """The file name as text; bytes that are not UTF-8 are written as \\xNN escapes."""
        return os.fsencode(self.path.name).decode("utf-8", "backslashreplace")

    def written_id(self, id_mode: str) -> str:
        """What an output's id column holds for this image: its number or its file name (model.task.ID_MODES)."""
        if id_mode not in ID_MODES:
            raise ValueError(f"id_mode {id_mode!r}: one of {', '.join(ID_MODES)}")
        return str(self.id) if id_mode == "number" else self.name


@dataclass
class FolderListing:
    images: list[TestImage]
    problems: list[str] = field(default_factory=list)


def natural_key(name: str):
    """Sort key that orders the numbers inside names by value: img2 before img10."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in re.split(r"(\d+)", name) if part]


def list_test_images(folder: str | Path, id_mode: str = "number") -> FolderListing:
    """The images of a test folder, in id order, and a problem line for everything else in it.

    ``number``: sorted by the number in the file name, which becomes the id. Names that are not numbers,
    and a second file with an id already taken (0001.jpg beside 0001.png), are still predicted: sorted after
    the numbered ones, given the next free ids, and reported. ``filename``: every image in natural name
    order, numbered from 1 (the CSV names the file). Only regular files are opened; folders, hidden and
    system files, other files and names that are not UTF-8 are reported."""
    folder = Path(folder)
    numbered, others, problems = [], [], []
    for path in sorted(folder.iterdir()):
        if path.is_dir():
            problems.append(f"{path}: a folder inside the test folder, ignored")
        elif path.name.startswith(".") or path.name.lower() in IGNORED_NAMES:
            problems.append(f"{path}: hidden or system file, ignored")
        elif not is_image_file(path) or not is_regular_file(path):
            problems.append(f"{path}: not an image file (jpg/jpeg/png/bmp/tif), ignored")
        elif id_mode == "number" and re.fullmatch(r"\d+", path.stem):
            numbered.append(path)
        else:
            others.append(path)
    numbered.sort(key=lambda p: (int(p.stem), p.suffix.lower(), p.name))
    images, taken = [], set()
    for path in numbered:
        if int(path.stem) in taken:
            others.append(path)
        else:
            taken.add(int(path.stem))
            images.append(TestImage(int(path.stem), path))
    next_id = max(taken, default=0) + 1
    for path in sorted(others, key=lambda p: natural_key(os.fsdecode(p.name))):
        image = TestImage(next_id, path)
        images.append(image)
        if id_mode == "number":
            why = "id already taken by another file" if re.fullmatch(r"\d+", path.stem) else "name is not a number"
            problems.append(f"{path}: {why}; predicted with id {next_id}")
        next_id += 1
    for image in images:
        if image.name != image.path.name:
            problems.append(f"{folder / image.name}: file name is not valid UTF-8; written as {image.name!r}")
    return FolderListing(images, problems)


def _decode(path: Path, size: int, crop_border: bool = True) -> tuple[np.ndarray, str, tuple[int, int]]:
    """The model's uint8 HWC view of one image, "" and the image's (height, width); or a black image, why
    the file could not be read, and (size, size)."""
    try:
        image = load_rgb(path, READ_TIMEOUT)
        return prepare(image, size, crop_border), "", image.shape[:2]
    except ImageReadError as e:
        return np.zeros((size, size, 3), np.uint8), str(e), (size, size)
    except Exception as e:  # anything else about one file must not stop the run either
        return np.zeros((size, size, 3), np.uint8), f"{path}: {type(e).__name__}: {e}", (size, size)


def ordered_map(fn, items: Iterable, threads: int, ahead: int) -> Iterator:
    """``fn(item)`` for each item, in order; with ``threads`` > 0 up to ``ahead`` calls run on that many
    threads while the caller consumes earlier results. (PIL, OpenCV, ONNX Runtime and PyTorch release
    the GIL, so threads overlap for real.)"""
    if threads <= 0:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(threads) as pool:
        window = deque()
        for item in items:
            window.append(pool.submit(fn, item))
            if len(window) > ahead:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


def decoded_batches(paths: list[Path], size: int, batch_size: int, threads: int, crop_border: bool = True,
                    shapes: list | None = None) -> Iterator[tuple[torch.Tensor, list[str]]]:
    """(uint8 N x 3 x size x size batch, per-image error or "") in order, decoded by ``threads`` threads
    about 8 images per thread ahead of the forward pass (0: decoded inline). Each image's original
    (height, width) is appended to ``shapes`` when given.

    Threads, not processes: no tensors pickled through shared memory (a Docker /dev/shm of 64 MB is
    no concern), nothing to fork, and on the 2-core dev CPU run.py took 10.9 s instead of 11.4 s."""
    images = ordered_map(lambda path: _decode(path, size, crop_border), paths, threads, 8 * threads)
    while chunk := list(itertools.islice(images, batch_size)):
        arrays, errors, sizes = zip(*chunk)
        if shapes is not None:
            shapes.extend(sizes)
        yield torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2), list(errors)


def to_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A decoded batch on the device; to a GPU through pinned memory, without waiting for the copy."""
    if device.type != "cuda":
        return images.to(device)
    return images.pin_memory().to(device, non_blocking=True)


@dataclass
class Prediction:
    probs: np.ndarray           # (N, *the bundle's output shape), averaged over TTA views and folds
    failed: dict[int, str]      # index -> reason, for images that could not be decoded
    shapes: list = field(default_factory=list)   # each image's original (height, width)


def auto_batch_size(device: torch.device, tta=None, engine=None) -> int:
    """Images per batch. Small batches stay in cache and run fastest on CPU: about 4 views per forward
    on PyTorch's 2-thread pool (lite0 at 224 px: 6 ms/image at 4 per forward, 15 ms at 32), and one
    image's views per run on each single-threaded ONNX Runtime stream (run.py 11.8 s vs 12.9 s at 2)."""
    if device.type == "cuda":
        return 32
    if getattr(engine, "streams", 1) > 1:
        return 1
    return max(1, 4 // (len(tta) if tta is not None else 1))


def forward_batches(engine, batches: Iterable, tta, device: torch.device, precision: str) -> Iterator:
    """(probabilities, errors) per (images, errors) batch, in order. An engine with ``streams`` > 1 (ONNX
    Runtime on CPU: one single-threaded stream per core) gets that many batches in flight at once."""
    streams = getattr(engine, "streams", 1)
    if streams > 1:
        return ordered_map(lambda batch: (engine.predict(batch[0], tta), batch[1]), batches, streams, streams)

    def inline():
        for images, errors in batches:
            with autocast(device, precision):
                yield engine.predict(images, tta), errors
    return inline()


def predict_paths(bundle: Bundle, paths: list[Path], device: torch.device, precision: str = "fp32",
                  batch_size: int = 2, workers: int = 0, tta=None, progress: bool = True,
                  channels_last: bool = True, engine=None) -> Prediction:
    """Averaged probabilities for ``paths``.

    ``engine`` runs the forward pass (default: the bundle's PyTorch ensemble in the chosen layout; see
    model.onnx_backend.select_engine). channels_last is faster on CPU (oneDNN) and CUDA alike and
    changes probabilities only by float rounding (a test holds it under 1e-5). ``workers`` threads decode
    images ahead of the forward pass (0: decode inline)."""
    probs, failed, shapes = [], {}, []
    if engine is None:
        engine, _ = select_engine(bundle, "torch", device, channels_last)
    cv2_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # one image per decode thread; OpenCV's own pool would fight the forward pass
    try:
        with torch.inference_mode(), tqdm(total=len(paths), desc=bundle.name, unit="img",
                                          disable=not progress, leave=False) as bar:
            batches = ((to_device(images, device).contiguous(memory_format=engine.input_format), errors)
                       for images, errors in decoded_batches(paths, bundle.img_size, batch_size, workers,
                                                             bundle.crop_border, shapes))
            done = 0
            for batch, errors in forward_batches(engine, batches, tta, device, precision):
                failed.update({index: error for index, error in enumerate(errors, done) if error})
                probs.append(batch.float())  # left on the device: a copy back per batch would wait for the GPU
                done += len(errors)
                bar.update(len(errors))
    finally:
        cv2.setNumThreads(cv2_threads)
    out = torch.cat(probs).cpu().numpy() if probs else np.zeros((0, *bundle.output_shape))
    out = out.astype(bundle.task.kind.predict_dtype)
    for index in failed:
        bundle.task.kind.fill_failed(out, index, bundle.prior)
    return Prediction(out, failed, shapes)


