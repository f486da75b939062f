"""What every reader shares: option checking, finding where the layout starts below the folder given as
``--data``, listing files, the group (patient) a pattern finds in a name, and the check of an image and
its mask. The records a reader returns (Sample, ReadResult, DatasetError) are in ``records``."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

from ..boxes import boxes_from_mask
from ..images import is_image_file, is_regular_file, upright_size
from ..keys import unknown_key_message
from ..masks import MaskError, load_mask
from ..registry import kinds
from .box_sample import box_sample
from .records import ReadResult, Sample, log, relative_key

COMMON_OPTIONS = ("reader", "root", "license")


class Reader:
    """One data source. Subclasses set ``name``, ``layouts`` (the kinds' ``label_layout`` values whose labels
    it can read: class, columns, mask, boxes) and ``options`` (option -> default; a default of None means
    optional) and implement ``looks_like`` and ``read``."""

    name = ""
    layouts: tuple[str, ...] = ("class", "columns")
    options: dict = {"subfolder": ""}
    summary = ""

    def __init__(self, task):
        self.task = task
        self.opts = {**self.options, **{k: v for k, v in task.data.items() if k not in COMMON_OPTIONS}}

    @classmethod
    def check(cls, data: dict, kind, heads: tuple[str, ...]) -> None:
        """Raise ValueError naming the first option that is unknown, of the wrong type or inconsistent."""
        if kind.label_layout not in cls.layouts:
            readable = [name for name, k in kinds().items() if k.label_layout in cls.layouts]
            raise ValueError(f"reader {cls.name} reads {' or '.join(readable)} tasks, not {kind.name}")
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
        cls.check_layout({**cls.options, **data}, kind.label_layout, heads)

    @classmethod
    def check_options(cls, opts: dict, heads: tuple[str, ...]) -> None:
        """Reader-specific consistency checks (a list that must have one entry per class, say)."""

    @classmethod
    def check_layout(cls, opts: dict, layout: str, heads: tuple[str, ...]) -> None:
        """Checks of the options that depend on the task's label layout (an option only one layout reads)."""

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


def list_images(folder: Path, problems: list[str], clash: str = "so each label matches one image",
                ignore: tuple[str, ...] = ()) -> dict[str, Path]:
    """Images in ``folder`` by file stem. Two images with one stem are ambiguous (which one does the label
    describe?) and reported (``clash`` ends the message); files ending in ``ignore`` (the labels, where they
    lie beside the images) are passed over, other entries skipped with a warning."""
    by_stem: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() in ignore:
            continue
        if is_broken_link(path):
            continue
        if not is_image_file(path) or not is_regular_file(path):
            log.warning("%s: not an image file (jpg/jpeg/png/bmp/tif), ignored", path)
            continue
        if path.stem in by_stem:
            problems.append(f"{path}: same name as {by_stem[path.stem].name}; rename one {clash}")
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


def is_broken_link(path: Path) -> bool:
    """Whether ``path`` is a link to nothing, said with a warning (the reader then skips it)."""
    if path.is_symlink() and not path.exists():
        log.warning("%s: a broken link (to %s), skipped", path, os.readlink(path))
        return True
    return False


def visible_files(folder: Path):
    """Every file below ``folder`` (recursively, sorted), skipping hidden files and folders.

    Linked folders are followed (a subset assembled from symlinks, data on another disk: training data is
    only read, so a link exposes nothing), each real folder once: a link back up the tree is skipped with a
    warning, as is a broken link."""
    seen = {os.path.realpath(folder)}
    for parent, dirs, files in os.walk(folder, followlinks=True):
        kept = []
        for d in sorted(d for d in dirs if not d.startswith(".")):
            real = os.path.realpath(os.path.join(parent, d))
            if real in seen:
                log.warning("%s: a link to a folder already read (%s), skipped", os.path.join(parent, d), real)
            else:
                seen.add(real)
                kept.append(d)
        dirs[:] = kept
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(parent) / name
            if is_broken_link(path):
                continue
            yield path


class GroupedByPattern:
    """A reader whose ``group_pattern`` option (a regex) takes each image's group (patient) from a string of
    its path (``group_text_is`` says which): its first capture group, or the whole match when it has none.
    Without the option every image is its own group."""

    group_text_is = "each image's file name"

    def groups_of(self, texts: dict[Path, str], where: Path, problems: list[str]) -> dict[Path, str | None] | None:
        """The group ``group_pattern`` finds for each image in its string of ``texts`` (None without the
        option); None, and one problem with a handful of examples, when the pattern misses some. Checked on
        the names before any image is decoded, so a wrong pattern fails in seconds rather than after every
        image was read."""
        pattern = self.opts["group_pattern"]
        groups = {image: group_of(text, pattern) if pattern is not None else None for image, text in texts.items()}
        missed = [texts[image] for image, group in groups.items() if pattern is not None and not group]
        if not missed:
            return groups
        examples = ", ".join(repr(t) for t in missed[:EXAMPLES])
        more = f" and {len(missed) - EXAMPLES} more" if len(missed) > EXAMPLES else ""
        problems.append(f"{where}: group_pattern {pattern!r} finds no group in {len(missed)} of {len(texts)} image "
                        f"names (it is searched in {self.group_text_is}): {examples}{more}; fix the pattern")
        return None


EXAMPLES = 5  # names shown when a pattern misses: enough to see why, not the whole data set


def group_of(text: str, pattern: str) -> str | None:
    """The group the regex ``pattern`` finds in ``text``: its first capture group, or the whole match."""
    match = re.search(pattern, text)
    return ((match.group(1) if match.re.groups else match.group(0)) if match else None) or None


def check_group_pattern(pattern) -> None:
    if pattern is None:
        return
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"group_pattern: expected a regular expression, got {pattern!r}")
    try:
        re.compile(pattern)
    except re.error as e:
        raise ValueError(f"group_pattern {pattern!r} is not a valid regular expression ({e})") from None


class SegmentationReader(GroupedByPattern, Reader):
    """A reader of images with mask images, for a segmentation task or, one box per connected component of
    each class, a detection task. ``mask_values`` (detection only: a segmentation task maps its classes to
    their values in ``classes:``) lists each class's value in the masks; default 255 for one class."""

    layouts = ("mask", "boxes")
    options = {"subfolder": "", "group_pattern": None, "mask_values": None}

    @classmethod
    def check_options(cls, opts: dict, heads) -> None:
        check_group_pattern(opts.get("group_pattern"))

    @classmethod
    def check_layout(cls, opts: dict, layout: str, heads) -> None:
        values = opts.get("mask_values")
        if layout != "boxes":
            if values is not None:
                raise ValueError("mask_values: for detection tasks; a segmentation task gives each class's mask "
                                 "value in classes:")
            return
        if values is None and len(heads) > 1:
            raise ValueError(f"mask_values: required for {len(heads)} classes: each class's value in the masks, in "
                             "the order of classes (e.g. [1, 2])")
        if values is not None and (not isinstance(values, list) or len(values) != len(heads) or len(set(values))
                                   != len(values) or not all(type(v) is int and 1 <= v <= 65535 for v in values)):
            raise ValueError(f"mask_values: expected {len(heads)} distinct whole number(s) from 1 to 65535 (0 is the "
                             f"background), one per class, got {values!r}")

    @property
    def mask_values(self) -> tuple[int, ...]:
        """Each class's value in the masks: the task's own (segmentation), else the option (255 for one class)."""
        return self.task.mask_values or tuple(self.opts["mask_values"] or (255,))


def segmentation_sample(task, image: Path | None, mask: Path | None, root: Path, group: str | None,
                        result: ReadResult, keep: bool = True, values: tuple[int, ...] | None = None) -> Sample | None:
    """Check one image and its mask and add the Sample to ``result``.

    The mask is read (model.masks.load_mask with ``values``, default ``task.mask_values``); its size must
    be the image's (read from the image's header). A segmentation task's sample has the presence labels,
    one 0/1 per class; a detection task's (label layout ``boxes``) has one box per 8-connected component
    of each class (``model.boxes.boxes_from_mask``, then ``box_sample``). Every problem goes to
    ``result.problems``. No sample is kept when there is one, when ``mask`` is None (the caller reported
    it missing) or when ``keep`` is False (the caller found another problem with this image); a readable
    image that is not kept goes to ``result.unlabelled``, so it is decoded too. ``image`` None (not
    found) checks the mask alone. Returns the Sample added, or None.
    """
    values = task.mask_values if values is None else values
    boxes = task.kind.label_layout == "boxes"
    before = len(result.problems)
    size = image_size(image, result.problems, "remove it and its mask") if image is not None else None
    ids = None
    if mask is not None:
        try:
            ids = load_mask(mask, values)
        except MaskError as e:
            # load_mask's advice names the task's classes:, where a segmentation task gives the values.
            result.problems.append(str(e).replace("set the task's classes: to", "set the reader's mask_values: to")
                                   if boxes else str(e))
    if size is not None and ids is not None and (ids.shape[1], ids.shape[0]) != size:
        result.problems.append(f"{image}: the image is {size[0]}x{size[1]} but its mask {mask} is "
                               f"{ids.shape[1]}x{ids.shape[0]} (width x height); a mask must have its image's size")
    if not keep or ids is None or len(result.problems) > before:
        if size is not None:
            result.unlabelled.append(image)
        return None
    if boxes:
        return box_sample(task, image, root, size, *boxes_from_mask(ids, len(values)), mask, group, result)
    counts = np.bincount(ids.ravel(), minlength=len(values) + 1)
    presence = tuple(int(n > 0) for n in counts[1:len(values) + 1])
    sample = Sample(image, relative_key(image, root), presence, (), group, mask)
    result.samples.append(sample)
    return sample


def image_size(image: Path, problems: list[str], remedy: str) -> tuple[int, int] | None:
    """(width, height) from the image's header, upright as it is decoded (an EXIF orientation of 5 to 8
    turns it a quarter); None (a problem, ``remedy`` its last words) when PIL cannot open it."""
    try:
        with Image.open(image) as im:
            return upright_size(im)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        problems.append(f"{image}: cannot read this image ({e}); re-export it (PNG, JPEG or TIFF) or {remedy}")
        return None
