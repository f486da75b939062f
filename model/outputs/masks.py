"""Segmentation outputs: the three forms a predicted mask is handed in, and reading them back to score.

* ``masks``: a folder with one PNG per test image, named after the image (``0001.png`` for ``0001.jpg``),
  each pixel the class's value in the task's mask files (0 background).
* ``rle``: a CSV in Kaggle's long format, ``id,class,rle``: one row per image and class, the class's pixels
  run-length encoded. An empty mask still has its row, with an empty ``rle``.
* ``summary``: a CSV with, per image, each class's lesion probability and predicted area in pixels.

In memory a mask is a uint8 (H, W) array of class ids: 0 background, 1..C the task's classes in order
(as in ``model.masks``); ``values[c - 1]`` is class c's pixel value in mask image files.

Run-length encoding, the same in both directions: ``"start length start length ..."`` with 1-based
starts, the runs sorted and never overlapping. Pixels are numbered in one of two orders:

* ``column`` (the default, Kaggle's usual convention: Airbus, SIIM, UW-Madison): top to bottom, then left
  to right, i.e. the mask flattened column-major (Fortran order); pixel (row r, col c) is r + c * H + 1.
* ``row`` (Carvana, HuBMAP): left to right, then top to bottom (row-major, C order); pixel (r, c) is
  r * W + c + 1.

An empty mask encodes as ``''``. Plain numpy, PIL and csv: nothing here needs torch.
"""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np
from PIL import Image

from ..atomic import atomic_path
from ..images import is_image_file
from ..masks import MaskError, load_mask, pixel_counts, segmentation_scores
from ..readers.base import group_of
from . import ScoreError, TaskScore, missing_output, read_csv

FORMATS = ("masks", "rle", "summary")
ORDERS = {"column": "F", "row": "C"}
SHOWN = 20  # at most this many ids or lines in one problem report


class MaskOutputError(ValueError):
    """An output that cannot be read at all (not a CSV, no such folder, wrong header)."""


def _flat_order(order: str) -> str:
    if order not in ORDERS:
        raise ValueError(f"RLE order {order!r}: 'column' (top to bottom, then left to right) or 'row'")
    return ORDERS[order]


def rle_encode(mask: np.ndarray, order: str = "column") -> str:
    """The RLE string of a boolean (H, W) mask (any nonzero pixel counts as set); '' when empty."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"rle_encode needs an (H, W) mask, got shape {mask.shape}")
    flat = mask.ravel(order=_flat_order(order)) != 0
    padded = np.concatenate([[0], flat.astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(padded)) + 1  # 1-based starts, then 1-based ends + 1, alternating
    edges[1::2] -= edges[::2]                     # ends -> lengths
    return " ".join(map(str, edges.tolist()))


def rle_decode(text: str, shape: tuple[int, int], order: str = "column") -> np.ndarray:
    """The boolean (H, W) mask of an RLE string; ValueError saying what is wrong with a malformed one."""
    flat_order = _flat_order(order)
    height, width = (int(s) for s in shape)
    n = height * width
    tokens = (text or "").split()
    if len(tokens) % 2:
        raise ValueError(f"RLE has {len(tokens)} numbers; it should be pairs of start and length")
    bad = next((t for t in tokens if not re.fullmatch(r"[0-9]+", t)), None)
    if bad is not None:
        raise ValueError(f"RLE token {bad[:20]!r} is not a whole number")
    numbers = [int(t) for t in tokens]
    if any(v > n for v in numbers):  # checked before numpy, so no huge number can overflow int64
        i = next(i for i, v in enumerate(numbers) if v > n) // 2
        raise ValueError(f"RLE run {i + 1} (start {numbers[2 * i]}, length {numbers[2 * i + 1]}) goes past "
                         f"the image's {n} pixels ({height}x{width})")
    runs = np.array(numbers, np.int64).reshape(-1, 2)
    starts, lengths = runs[:, 0], runs[:, 1]
    ends = starts + lengths - 1  # 1-based, inclusive

    def fail(i: int, why: str):
        raise ValueError(f"RLE run {i + 1} (start {starts[i]}, length {lengths[i]}) {why}")

    if (starts < 1).any():
        fail(int(np.argmax(starts < 1)), "starts below 1; starts are 1-based")
    if (lengths < 1).any():
        fail(int(np.argmax(lengths < 1)), "has a length below 1")
    if (ends > n).any():
        fail(int(np.argmax(ends > n)), f"goes past the image's {n} pixels ({height}x{width})")
    overlap = starts[1:] <= ends[:-1]
    if overlap.any():
        i = int(np.argmax(overlap)) + 1
        fail(i, f"starts at or before the end of run {i} (pixel {ends[i - 1]}); runs must be sorted and "
                "not overlap")
    change = np.zeros(n + 1, np.int32)
    change[starts - 1] += 1
    change[ends] -= 1
    return (np.cumsum(change[:n]) > 0).reshape((height, width), order=flat_order)


def _lookup(values) -> np.ndarray:
    """The class id -> pixel value table for ``values``."""
    values = tuple(int(v) for v in values)
    if not values or any(not 0 < v < 65536 for v in values) or len(set(values)) < len(values):
        raise ValueError(f"mask values {list(values)}: one distinct value in 1..65535 per class")
    return np.array((0, *values), np.uint8 if max(values) < 256 else np.uint16)


def _check_masks(images, masks, n_classes: int) -> None:
    if len(images) != len(masks):
        raise ValueError(f"{len(images)} images but {len(masks)} masks")
    for image, mask in zip(images, masks):
        mask = np.asarray(mask)
        if mask.ndim != 2:
            raise ValueError(f"{image.name}: the mask should be (H, W) class ids, got shape {mask.shape}")
        if mask.size and (mask.min() < 0 or mask.max() > n_classes):
            raise ValueError(f"{image.name}: class ids should be 0..{n_classes}, found {mask.min()}..{mask.max()}")


def mask_file_names(images) -> list[str]:
    """The mask file name of each image: its stem + '.png'; when that is taken (0001.png beside
    0001.jpg), its full name + '.png' (0001.jpg.png), then a number (0001.jpg.2.png). Names are compared
    without case, so no two collide on a case-insensitive file system either."""
    taken, out = set(), []
    for image in images:
        name = str(image.name)
        candidates = [f"{Path(name).stem}.png", f"{name}.png"]
        k = 2
        while all(c.casefold() in taken for c in candidates):
            candidates.append(f"{name}.{k}.png")
            k += 1
        chosen = next(c for c in candidates if c.casefold() not in taken)
        taken.add(chosen.casefold())
        out.append(chosen)
    return out


def write_mask_folder(folder: Path, images, masks, values) -> list[Path]:
    """One PNG per image in ``folder`` (created), named by ``mask_file_names``, each pixel its class's
    value (0 background); 8-bit when every value is below 256, else 16-bit. Each file written atomically.
    Returns the paths, in the images' order; a mask is read back under its path's stem."""
    folder = Path(folder)
    lut = _lookup(values)
    _check_masks(images, masks, len(lut) - 1)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, mask in zip(mask_file_names(images), masks):
        path = folder / name
        with atomic_path(path) as tmp:
            Image.fromarray(lut[np.asarray(mask)]).save(tmp, format="PNG")
        paths.append(path)
    return paths


def _csv_text(rows) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def rle_csv(images, masks, heads, order: str = "column", id_header: str = "id", id_mode: str = "number",
            columns=("class", "rle")) -> str:
    """CSV text ``<id_header>,class,rle`` (``columns`` names the last two): one row per image and class (the
    class by its name in ``heads``), an empty rle for a class with no pixel; ids by ``id_mode`` (number:
    image.id, filename: image.name)."""
    _flat_order(order)
    _check_masks(images, masks, len(heads))
    rows = [[id_header, *columns]]
    for image, mask in zip(images, masks):
        key, mask = image.written_id(id_mode), np.asarray(mask)
        rows += [[key, head, rle_encode(mask == c, order)] for c, head in enumerate(heads, 1)]
    return _csv_text(rows)


def summary_csv(images, masks, probs_lesion, heads, id_header: str = "id", id_mode: str = "number",
                columns=None) -> str:
    """CSV text ``<id_header>,p_<class>...,area_<class>...``: per image each class's lesion probability
    (``probs_lesion`` (N, C), 6 decimals) and its predicted area in pixels (the count of its class id in
    the mask, which is at the image's original size)."""
    _check_masks(images, masks, len(heads))
    probs = np.asarray(probs_lesion, np.float64)
    if probs.shape != (len(images), len(heads)):
        raise ValueError(f"probs_lesion should be ({len(images)}, {len(heads)}), got {probs.shape}")
    if not np.isfinite(probs).all() or (probs < 0).any() or (probs > 1).any():
        raise ValueError("probs_lesion should be probabilities in [0, 1]")
    rows = [[id_header, *(columns or [*(f"p_{h}" for h in heads), *(f"area_{h}" for h in heads)])]]
    for image, mask, p in zip(images, masks, probs):
        mask = np.asarray(mask)
        areas = [int(np.count_nonzero(mask == c)) for c in range(1, len(heads) + 1)]
        rows.append([image.written_id(id_mode), *(f"{v:.6f}" for v in p), *areas])
    return _csv_text(rows)


def _some(items) -> str:
    items = list(items)
    return ", ".join(map(str, items[:SHOWN])) + (" ..." if len(items) > SHOWN else "")


def _capped(lines: list[str]) -> list[str]:
    return lines if len(lines) <= SHOWN else [*lines[:SHOWN], f"... and {len(lines) - SHOWN} more such lines"]


def read_mask_folder(folder: Path, names, values) -> tuple[dict[str, np.ndarray], list[str]]:
    """Class-id masks by stem for the stems in ``names``, from a folder of mask images (png, tif, bmp,
    jpg; a file matches the stem it has), and problem lines: stems without a mask, masks that cannot be
    read (the MaskError message), a second file for one stem (the first by name is used), other files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MaskOutputError(f"{folder}: mask folder not found")
    wanted = {str(n) for n in names}
    masks: dict[str, np.ndarray] = {}
    found: dict[str, Path] = {}
    unreadable, doubles, extra = [], [], []
    for path in sorted(folder.iterdir()):
        if not (is_image_file(path) and path.is_file() and path.stem in wanted):
            extra.append(path.name + ("/" if path.is_dir() else ""))
        elif path.stem in found:
            doubles.append(f"{path}: a second mask for {path.stem} beside {found[path.stem].name}, ignored")
        else:
            found[path.stem] = path
            try:
                masks[path.stem] = load_mask(path, tuple(values))
            except MaskError as e:
                unreadable.append(str(e))
    missing = [n for n in names if str(n) not in found]
    problems = _capped(unreadable) + _capped(doubles)
    if missing:
        problems.append(f"{folder}: {len(missing)} image(s) have no mask file: {_some(missing)}")
    if extra:
        problems.append(f"{folder}: {len(extra)} file(s) match no image, ignored: {_some(extra)}")
    return masks, problems


def read_rle_csv(path: Path, shapes: dict, heads, order: str = "column",
                 columns=("class", "rle")) -> tuple[dict[str, np.ndarray], list[str]]:
    """Class-id masks keyed by the CSV's id value (a string, as ``shapes`` is keyed) from an RLE CSV as
    ``rle_csv`` writes it (the first column the id, then ``class`` and ``rle`` columns); ``shapes`` gives
    each key's (H, W). Problem lines: ids not in ``shapes``, unknown classes, malformed rows and RLE,
    duplicate rows (the first is used), ids lacking a class's row (that class empty there), pixels in two
    classes (the later class kept). An id with no usable row is left out; the caller counts missing ids."""
    path = Path(path)
    _flat_order(order)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if r]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise MaskOutputError(f"{path}: cannot read as a UTF-8 CSV ({e})") from e
    header = [c.strip() for c in rows[0]] if rows else []
    class_column, rle_column = columns
    if len(header) < 3 or class_column not in header[1:] or rle_column not in header[1:]:
        raise MaskOutputError(f"{path}: header {header} should be id,{class_column},{rle_column}")
    at_class, at_rle = header.index(class_column), header.index(rle_column)
    classes = {h: c for c, h in enumerate(heads, 1)}
    runs: dict[str, dict[int, np.ndarray]] = {}
    seen, unknown_ids, unknown_classes = set(), [], set()
    malformed, duplicates = [], []
    for line, row in enumerate(rows[1:], 2):
        if len(row) <= max(at_class, at_rle):
            malformed.append(f"{path.name} line {line}: {len(row)} column(s), expected {len(header)}")
            continue
        key, head = row[0].strip(), row[at_class].strip()
        if key not in shapes:
            unknown_ids.append(key)
            continue
        if head not in classes:
            unknown_classes.add(head)
            continue
        if (key, head) in seen:
            duplicates.append(f"{key}/{head}")
            continue
        seen.add((key, head))
        try:
            runs.setdefault(key, {})[classes[head]] = rle_decode(row[at_rle], shapes[key], order)
        except ValueError as e:
            malformed.append(f"{path.name} line {line} (id {key}, class {head}): {e}")
    masks, lacking, overlaps = {}, {h: [] for h in heads}, []
    for key, by_class in runs.items():
        mask = np.zeros(tuple(shapes[key]), np.uint8)
        for c, head in enumerate(heads, 1):
            if c not in by_class:
                lacking[head].append(key)
                continue
            if (mask[by_class[c]] > 0).any():
                overlaps.append(key)
            mask[by_class[c]] = c
        masks[key] = mask
    problems = _capped(malformed)
    if unknown_ids:
        ids = list(dict.fromkeys(unknown_ids))
        problems.append(f"{path.name}: {len(ids)} id(s) are not in the ground truth, ignored: {_some(ids)}")
    if unknown_classes:
        problems.append(f"{path.name}: unknown class(es) {_some(sorted(unknown_classes))}, ignored; "
                        f"the classes are {', '.join(heads)}")
    if duplicates:
        problems.append(f"{path.name}: {len(duplicates)} id/class pair(s) appear more than once, the first row "
                        f"is used: {_some(duplicates)}")
    for head, keys in lacking.items():
        if keys:
            problems.append(f"{path.name}: {len(keys)} id(s) have no usable row for class {head} (empty there): "
                            f"{_some(keys)}")
    if overlaps:
        problems.append(f"{path.name}: {len(overlaps)} id(s) have pixels in more than one class (the later class "
                        f"is kept): {_some(overlaps)}")
    return masks, problems


def score_mask_task(task, pred_dir: Path, gt_dir: Path) -> TaskScore | None:
    """A segmentation task's masks (a folder of mask images, or an RLE CSV) against the true masks.

    The true masks are GT_DIR/<test_folder>/, one mask image per test image, named after the image's stem
    (``0001.png``, or with the task's mask suffix, ``0001_mask.png``); None when that folder has none.
    Dice per volume pools the images whose names match the task's ``data.group_pattern``; without one,
    each image is its own volume. A test image with no predicted mask counts as an empty prediction."""
    truth_dir = gt_dir / task.test_folder
    suffix = str(task.data.get("mask_suffix", "_mask"))
    files = sorted(p for p in truth_dir.iterdir() if is_image_file(p) and not p.name.startswith(".")) \
        if truth_dir.is_dir() else []
    if not files:
        return None
    pred = pred_dir / task.output.file
    if not pred.exists():
        return missing_output(task, pred)
    problems: list[str] = []
    truth: dict[str, object] = {}
    truth_files: dict[str, Path] = {}
    for path in files:
        stem = path.stem.removesuffix(suffix) if suffix and path.stem.endswith(suffix) else path.stem
        truth_files[stem] = path
        try:
            truth[stem] = load_mask(path, task.mask_values)
        except MaskError as e:
            raise ScoreError(f"{e} (in the ground truth)") from None
    if task.output.values == "masks":
        predicted, found = read_mask_folder(pred, list(truth), task.mask_values)
    elif task.output.values == "rle":
        _, rows = read_csv(pred)
        lookup = {key: stem for key in {r[0].strip() for r in rows if r} if (stem := _stem_of(key, truth))}
        predicted, found = read_rle_csv(pred, {k: truth[s].shape for k, s in lookup.items()}, task.heads,
                                                     task.output.rle_order, task.output.columns)
        predicted = {lookup[key]: mask for key, mask in predicted.items()}
    else:
        raise ScoreError(f"{task.name}: output.values is summary, which holds no masks to score; "
                         "score a masks or rle output")
    problems += found
    stems = list(truth)
    missing = [s for s in stems if s not in predicted]
    if len(missing) == len(stems):
        raise ScoreError(f"{pred}: no predicted mask matches a true mask in {truth_dir}; is it this test set's?")
    if missing:
        problems.append(f"{len(missing)} image(s) have no predicted mask (scored as empty): {missing[:10]}")
    bad = [s for s in stems if s in predicted and predicted[s].shape != truth[s].shape]
    if bad:
        # Only a mask folder can hold a mask of another size (RLE rows are decoded at the true size).
        first = next(p for p in sorted(pred.iterdir()) if p.stem == bad[0] and is_image_file(p) and p.is_file())
        (h, w), (true_h, true_w) = predicted[bad[0]].shape, truth[bad[0]].shape
        raise ScoreError(f"{first}: a predicted mask of {w}x{h}, but the true mask {truth_files[bad[0]]} is "
                         f"{true_w}x{true_h} ({len(bad)} mask(s) of another size than the truth: {bad[:5]}); "
                         "masks must be at each image's original size")
    pattern = task.data.get("group_pattern")
    groups = [group_of(stem, pattern) or stem for stem in stems] if pattern else stems
    # Counted image by image: test images differ in size.
    counts = np.concatenate([pixel_counts(predicted.get(s, np.zeros_like(truth[s]))[None], truth[s][None],
                                          len(task.heads)) for s in stems])
    scores = segmentation_scores(counts, np.array(groups), task.metric)
    scores["n"] = len(stems)
    return TaskScore(task.name, scores, problems)


def _stem_of(key: str, truth: dict) -> str | None:
    """The true mask an RLE row's id names: its stem, its file name (0001.png), or its number (1 for 0001)."""
    for candidate in (key, Path(key).stem):
        if candidate in truth:
            return candidate
    if key.isdigit():
        return next((stem for stem in truth if stem.isdigit() and int(stem) == int(key)), None)
    return None
