"""What a reader hands on: one Sample per image, the ReadResult of a whole dataset, and the DatasetError
that lists every bad file. Every reader returns the same record per image, whatever its source layout
(detectron2's dataset dicts): nothing downstream knows which reader made it."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("model.readers")
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

    ``labels``: (class id,) for a single-label task; one 0/1/UNKNOWN per label for a multi-label task; for
    a segmentation or detection task, one 0/1 per class: whether its mask (its boxes) holds that class.
    ``boxes``: lesion boxes as normalised (xc, yc, w, h) of the full upright image, for box-guided CutMix.
    ``key``: the path relative to the dataset root, used by the folds file.
    ``group``: a patient (or other) id; images of one group never go to different folds.
    ``mask``: a segmentation task's mask image (class values per pixel, model.masks); None otherwise.
    ``objects``: the image's boxes, each (class index into the task's heads, x1, y1, x2, y2) in pixels of
    the upright image, x2/y2 exclusive (``model.boxes``' convention), after ``model.boxes.check_boxes`` (the
    kept boxes only, clipped); ``()`` for an image without objects, and for readers without boxes.
    """

    path: Path
    key: str
    labels: tuple[int, ...]
    boxes: tuple[tuple[float, float, float, float], ...] = ()
    group: str | None = None
    mask: Path | None = None
    objects: tuple[tuple[int, float, float, float, float], ...] = ()


@dataclass
class ReadResult:
    samples: list[Sample]
    problems: list[str] = field(default_factory=list)
    # Images that were found but not turned into samples (their labels had problems): they are decoded
    # too, so that one report lists a broken image beside a broken label.
    unlabelled: list[Path] = field(default_factory=list)
    # What was done to boxes without stopping the run, one message each (each also logged once as a
    # warning), for the run's summary to count: a box of zero width or height dropped, a box partly
    # outside its image clipped to it.
    dropped: list[str] = field(default_factory=list)
    clipped: list[str] = field(default_factory=list)


def relative_key(path: Path, root: Path) -> str:
    """A Sample's key: ``path`` relative to the dataset root (the whole path for a file outside it, which a
    CSV may name)."""
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()
