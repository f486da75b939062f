"""What every reader shares: the Sample it yields, the one error that lists every bad file, option
checking, and finding where the layout starts below the folder given as ``--data``."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..images import is_image_file, is_regular_file
from ..keys import unknown_key_message

log = logging.getLogger("model.readers")
MAX_LISTED = 40
COMMON_OPTIONS = ("reader", "root", "license")


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

    ``labels``: (class id,) for a single-label task; one 0/1/UNKNOWN per label for a multi-label task.
    ``boxes``: lesion boxes as normalised (xc, yc, w, h) of the full image, for box-guided CutMix.
    ``key``: the path relative to the dataset root, used by the folds file.
    ``group``: a patient (or other) id; images of one group never go to different folds.
    """

    path: Path
    key: str
    labels: tuple[int, ...]
    boxes: tuple[tuple[float, float, float, float], ...] = ()
    group: str | None = None


@dataclass
class ReadResult:
    samples: list[Sample]
    problems: list[str] = field(default_factory=list)
    # Images that were found but not turned into samples (their labels had problems): they are decoded
    # too, so that one report lists a broken image beside a broken label.
    unlabelled: list[Path] = field(default_factory=list)


class Reader:
    """One data source. Subclasses set ``name``, ``kinds`` and ``options`` (option -> default; a default of
    None means optional) and implement ``looks_like`` and ``read``."""

    name = ""
    kinds: tuple[str, ...] = ("single-label", "multi-label")
    options: dict = {"subfolder": ""}
    summary = ""

    def __init__(self, task):
        self.task = task
        self.opts = {**self.options, **{k: v for k, v in task.data.items() if k not in COMMON_OPTIONS}}

    @classmethod
    def check(cls, data: dict, kind, heads: tuple[str, ...]) -> None:
        """Raise ValueError naming the first option that is unknown, of the wrong type or inconsistent."""
        if kind.name not in cls.kinds:
            raise ValueError(f"reader {cls.name} reads {' or '.join(cls.kinds)} tasks, not {kind.name}")
        valid = (*COMMON_OPTIONS, *cls.options)
        for key, value in data.items():
            if key not in valid:
                raise ValueError(f"reader {cls.name}: {unknown_key_message(str(key), valid)}")
            default = cls.options.get(key)
            if key in ("root", "license") or default is None:
                continue
            if not isinstance(value, type(default)):
                raise ValueError(f"{key}: expected a {type(default).__name__}, got {value!r}")
        cls.check_options({**cls.options, **data}, heads)

    @classmethod
    def check_options(cls, opts: dict, heads: tuple[str, ...]) -> None:
        """Reader-specific consistency checks (a list that must have one entry per class, say)."""

    def locate(self, data: str | Path) -> tuple[Path, Path]:
        """(dataset root, where the layout starts) for ``data``: the root itself, the layout folder, or any
        folder between them along ``subfolder``. Paths (keys) are relative to the dataset root."""
        data = Path(data).expanduser().resolve()
        if not data.exists():
            raise FileNotFoundError(f"{data}: training data not found; pass the folder that holds it with --data")
        parts = Path(self.opts["subfolder"]).parts
        for skip in range(len(parts) + 1):
            layout = data.joinpath(*parts[skip:])
            if self.looks_like(layout):
                return _root_of(layout, parts), layout
        raise FileNotFoundError(f"{data}: no {self.task.name} training data here. Expected {self.describe()}; "
                                f"pass that folder (or the one above it) with --data.")

    def describe(self) -> str:
        where = f"{self.opts['subfolder']}/ with " if self.opts["subfolder"] else ""
        return where + self.summary

    def looks_like(self, folder: Path) -> bool:
        raise NotImplementedError

    def read(self, layout: Path, root: Path) -> ReadResult:
        raise NotImplementedError


def _root_of(layout: Path, parts: tuple[str, ...]) -> Path:
    """The layout folder less the longest tail of ``subfolder`` that its path ends with: for subfolder
    a/train, .../root/a/train -> .../root, .../copy/train -> .../copy, .../other -> .../other."""
    for n in range(len(parts), 0, -1):
        if layout.parts[-n:] == parts[-n:]:
            return layout.parents[n - 1]
    return layout


def list_images(folder: Path, problems: list[str]) -> dict[str, Path]:
    """Images in ``folder`` by file stem. Two images with one stem are ambiguous (which one does the label
    describe?) and reported; other entries are skipped with a warning."""
    by_stem: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if not is_image_file(path) or not is_regular_file(path):
            log.warning("%s: not an image file (jpg/jpeg/png/bmp), ignored", path)
            continue
        if path.stem in by_stem:
            problems.append(f"{path}: same name as {by_stem[path.stem].name}; rename one so each label matches one image")
            continue
        by_stem[path.stem] = path
    return by_stem


def unexpected_folders(layout: Path, expected, what: str, problems: list[str]) -> None:
    """Every visible folder in ``layout`` that is not one of ``expected`` is a problem: a class folder
    named wrongly (7类, Benign) would otherwise be left out of training without a word."""
    for path in sorted(layout.iterdir()):
        if path.is_dir() and not path.name.startswith(".") and path.name not in expected:
            problems.append(f"{path}: folder is not one of the {what} ({', '.join(expected)}); "
                            "rename it, add its class to the task file, or move it away")


def parse_box(tokens: list[str]) -> tuple[float, float, float, float] | None:
    """(xc, yc, w, h) from the first four tokens when they are numbers in [0, 1]; None otherwise."""
    if len(tokens) < 4:
        return None
    try:
        box = tuple(float(t) for t in tokens[:4])
    except ValueError:
        return None
    return box if all(0.0 <= v <= 1.0 for v in box) else None


def relative_key(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()
