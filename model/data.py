"""Readers for the competition's training layout.

::

    <root>/乳腺分类训练数据集/train/{2类,3类,4A类,4B类,4C类,5类}/{images,labels}/
    <root>/乳腺特征训练数据集/train/{images,boundary_labels,calcification_labels,direction_labels,shape_labels}/

``--data`` may name ``<root>``, the task's folder or its ``train`` folder. Every problem found is
collected and reported together in one DatasetError, so a user fixes the data in one pass.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from .images import is_image_file
from .tasks import CLA, CLA_FOLDERS, FEA, FEATURES, UNKNOWN, Task

log = logging.getLogger(__name__)

TASK_FOLDERS = {"cla": "乳腺分类训练数据集", "fea": "乳腺特征训练数据集"}
MAX_LISTED = 40


class DatasetError(ValueError):
    """The training data cannot be used as it is; the message lists every offending file."""

    def __init__(self, summary: str, problems: list[str]):
        listed = problems[:MAX_LISTED]
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        super().__init__(f"{summary}\n  " + "\n  ".join(listed) + more)
        self.problems = problems


@dataclass(frozen=True)
class Sample:
    """One training image.

    ``labels``: (class,) for cla; one 0/1/UNKNOWN per feature for fea.
    ``boxes``: lesion boxes as normalised (xc, yc, w, h) of the full image.
    ``key``: the path relative to the dataset root, used by the folds file.
    """

    path: Path
    key: str
    labels: tuple[int, ...]
    boxes: tuple[tuple[float, float, float, float], ...]


def find_train_dir(data: str | Path, task: Task) -> tuple[Path, Path]:
    """Return (dataset root, the task's train folder) for any of the accepted ``--data`` folders."""
    data = Path(data).expanduser().resolve()
    if not data.is_dir():
        raise FileNotFoundError(f"{data}: training data folder not found. Pass the folder that contains "
                                f"{TASK_FOLDERS[task.name]}/ with --data.")
    candidates = [data / TASK_FOLDERS[task.name] / "train", data / "train", data]
    for train in candidates:
        if _looks_like_train(train, task):
            if train.name != "train":
                return train, train
            official = train.parent.name == TASK_FOLDERS[task.name]
            return (train.parent.parent if official else train.parent), train
    expected = ("class folders " + ", ".join(CLA_FOLDERS)) if task is CLA else \
        "images/ and " + ", ".join(f"{f}_labels/" for f in FEATURES)
    raise FileNotFoundError(f"{data}: no {task.name} training data here. Expected {TASK_FOLDERS[task.name]}/train/ "
                            f"with {expected}, or pass that train folder itself.")


def _looks_like_train(folder: Path, task: Task) -> bool:
    if not folder.is_dir():
        return False
    if task is CLA:
        return any((folder / name).is_dir() for name in CLA_FOLDERS)
    return (folder / "images").is_dir()


def _list_images(folder: Path, problems: list[str]) -> dict[str, Path]:
    """Images by file stem; two images with one stem are ambiguous (which one does the label describe?)."""
    by_stem: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        if not is_image_file(path):
            log.warning("%s: not an image (jpg/jpeg/png/bmp), ignored", path)
            continue
        if path.stem in by_stem:
            problems.append(f"{path}: same name as {by_stem[path.stem].name}; rename one so each label matches one image")
            continue
        by_stem[path.stem] = path
    return by_stem


def _label_files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.glob("*.txt"))}


def _parse_box(tokens: list[str]) -> tuple[float, float, float, float] | None:
    if len(tokens) < 4:
        return None
    box = tuple(float(t) for t in tokens[:4])
    return box if all(0.0 <= v <= 1.0 for v in box) else None


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def read_cla(data: str | Path) -> list[Sample]:
    """Read the 6-class BI-RADS training set. Raw class ids 1..6 become labels 0..5."""
    root, train = find_train_dir(data, CLA)
    problems: list[str] = []
    samples: list[Sample] = []
    found_any = False
    for label, name in enumerate(CLA_FOLDERS):
        folder = train / name
        if not folder.is_dir():
            log.warning("%s: class folder missing; class %s has no training images", folder, name)
            continue
        found_any = True
        images = _list_images(folder / "images", problems) if (folder / "images").is_dir() else {}
        labels = _label_files(folder / "labels")
        if not images:
            problems.append(f"{folder}: class folder has no images (expected {name}/images/*.png|jpg)")
        for stem in sorted(set(labels) - set(images)):
            problems.append(f"{labels[stem]}: label file without an image in {folder / 'images'}")
        for stem, path in images.items():
            if stem not in labels:
                problems.append(f"{path}: no label file {folder / 'labels' / (stem + '.txt')}")
                continue
            parsed = _read_cla_label(labels[stem], expected=label, problems=problems)
            if parsed is not None:
                samples.append(Sample(path, _relative(path, root), (label,), parsed))
    if not found_any:
        problems.append(f"{train}: none of the class folders {', '.join(CLA_FOLDERS)} exists")
    if problems:
        raise DatasetError(f"{train}: {len(problems)} problem(s) in the cla training data; fix them and rerun:",
                           problems)
    return samples


def _read_cla_label(path: Path, expected: int, problems: list[str]):
    lines = [ln.split() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    if not lines:
        problems.append(f"{path}: empty label file (expected 'cls xc yc w h', cls 1..6)")
        return None
    classes, boxes = set(), []
    for number, tokens in enumerate(lines, 1):
        try:
            raw = int(float(tokens[0]))
            box = _parse_box(tokens[1:])
        except ValueError:
            problems.append(f"{path}:{number}: cannot parse {' '.join(tokens)!r} (expected 'cls xc yc w h')")
            return None
        if not 1 <= raw <= 6 or float(tokens[0]) != raw:
            problems.append(f"{path}:{number}: class id {tokens[0]} is not one of 1..6")
            return None
        classes.add(raw - 1)
        if box is not None:
            boxes.append(box)
    if len(classes) > 1:
        problems.append(f"{path}: lines disagree on the class ({sorted(c + 1 for c in classes)}); keep one class per image")
        return None
    (label,) = classes
    if label != expected:
        problems.append(f"{path}: class id {label + 1} ({CLA_FOLDERS[label]}) but the file lies in "
                        f"{CLA_FOLDERS[expected]}; move the image or correct the label")
        return None
    return tuple(boxes)


def read_fea(data: str | Path) -> list[Sample]:
    """Read the four-feature training set. An empty or missing label file is UNKNOWN, never 0."""
    root, train = find_train_dir(data, FEA)
    problems: list[str] = []
    images = _list_images(train / "images", problems)
    if not images:
        problems.append(f"{train / 'images'}: no images")
    label_files = {}
    for feature in FEATURES:
        folder = train / f"{feature}_labels"
        if not folder.is_dir():
            log.warning("%s: folder missing; %s is unknown for every image", folder, feature)
        label_files[feature] = _label_files(folder)
        for stem in sorted(set(label_files[feature]) - set(images)):
            problems.append(f"{label_files[feature][stem]}: label file without an image in {train / 'images'}")
    samples, unknown = [], dict.fromkeys(FEATURES, 0)
    for stem, path in images.items():
        values, boxes = [], []
        for feature in FEATURES:
            value, box = _read_fea_label(label_files[feature].get(stem), problems)
            values.append(value)
            unknown[feature] += value == UNKNOWN
            if box is not None and box not in boxes:
                boxes.append(box)
        samples.append(Sample(path, _relative(path, root), tuple(values), tuple(boxes)))
    if problems:
        raise DatasetError(f"{train}: {len(problems)} problem(s) in the fea training data; fix them and rerun:",
                           problems)
    if any(unknown.values()):
        log.info("fea labels unknown (empty or missing file), masked out of the loss: %s",
                 ", ".join(f"{k} {v}" for k, v in unknown.items()))
    return samples


def _read_fea_label(path: Path | None, problems: list[str]):
    if path is None:
        return UNKNOWN, None
    tokens = path.read_text(encoding="utf-8", errors="replace").split()
    if not tokens:
        return UNKNOWN, None
    if tokens[0] not in ("0", "1", "0.0", "1.0"):
        problems.append(f"{path}: first token {tokens[0]!r} is not 0 or 1")
        return UNKNOWN, None
    try:
        box = _parse_box(tokens[1:5])
    except ValueError:
        box = None
    return int(float(tokens[0])), box


READERS = {"cla": read_cla, "fea": read_fea}


def read_dataset(data: str | Path, task: Task) -> list[Sample]:
    return READERS[task.name](data)


def dataset_name(data: str | Path, task: Task) -> str:
    """A stable name for the dataset behind ``data`` (its root folder's name), used to keep folds apart."""
    root, _ = find_train_dir(data, task)
    return root.name or "data"
