"""``csv``: a table with one row per image.

::

    image,label,patient,x0,y0,x1,y1
    scans/a.png,malignant,P017,120,80,260,190
    scans/b.png,benign,P017,,,,

Options:

* ``file``: the CSV's name (default ``train.csv``); ``--data`` may also name the CSV itself.
* ``image_column`` (default ``image``): paths relative to the CSV's folder, or to ``image_root`` (a folder
  relative to the CSV's folder); absolute paths are allowed.
* single-label: ``label_column`` (default ``label``) and ``class_values`` (the value each class has in the
  CSV, in the order of ``classes``; default the class names).
* multi-label: ``label_columns`` (one per label, in the order of ``labels``; default the label names), each
  0 or 1; an empty cell means unknown (masked out of the loss and the metric).
* segmentation: ``mask_column`` (default ``mask``), the path of the image's mask, relative to the same
  folder as the images; label and box columns are not read. The mask gives the presence labels (see
  ``base.segmentation_sample``).
* detection: one row per box, ``image,label,x1,y1,x2,y2``: ``label_column`` is the box's class (its values
  ``class_values``, as for single-label) and ``box_columns`` (required) its four coordinates. An image may
  have several rows; a row whose four box cells are empty says the image has no objects (its class cell is
  not read). The boxes go through ``model.boxes.check_boxes`` (``box_sample``): one of zero size is dropped
  and one partly outside clipped, with a warning, and the problems name the CSV, the image and its lines.
* ``group_column``: a patient (or study) id; no group is split across folds. Every row of one image must
  name the same group.
* ``box_columns``: four columns of a box (classification: a lesion box for box-guided CutMix, clipped to the
  image; all four empty: no box), read as ``box_format`` ``xyxy`` (default: x1, y1, x2, y2, the corners,
  x2 exclusive) or ``xywh`` (x, y, width, height: COCO's), in ``box_units`` ``pixels`` (default) of the
  upright image or ``relative`` to its width and height.

Every bad row is reported at once: a missing file, an unknown class, a duplicate path (but for box rows),
an empty group, a bad box; for segmentation a missing or empty mask, an unreadable one, an unknown mask
value, a mask whose size is not its image's.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

from ..images import is_image_file, is_regular_file
from ..metric import UNKNOWN, binary_label
from .base import ReadResult, Reader, Sample, image_size, relative_key, segmentation_sample
from .box_sample import box_sample

BOX_FORMATS = {"xyxy": "x1, y1, x2, y2", "xywh": "x, y, width, height"}
BOX_UNITS = ("pixels", "relative")


class CsvTable(Reader):
    name = "csv"
    layouts = ("class", "columns", "mask", "boxes")
    options = {"subfolder": "", "file": "train.csv", "image_column": "image", "image_root": "",
               "label_column": "label", "label_columns": None, "class_values": None, "group_column": None,
               "box_columns": None, "box_format": "xyxy", "box_units": "pixels", "mask_column": "mask"}
    summary = "a CSV of image paths and labels"

    def __init__(self, task):
        super().__init__(task)
        # A segmentation task's row gives a mask instead of labels and boxes: read by _mask_row.
        self.reads_masks = task.kind.label_layout == "mask"

    @classmethod
    def check_options(cls, opts: dict, heads) -> None:
        for key, length in (("class_values", len(heads)), ("label_columns", len(heads)), ("box_columns", 4)):
            value = opts.get(key)
            if value is not None and (not isinstance(value, list) or len(value) != length):
                raise ValueError(f"{key}: expected a list of {length}")
        if opts.get("group_column") is not None and not isinstance(opts["group_column"], str):
            raise ValueError("group_column: expected a column name")
        if opts["box_format"] not in BOX_FORMATS or opts["box_units"] not in BOX_UNITS:
            raise ValueError(f"box_format {opts['box_format']!r}, box_units {opts['box_units']!r}: expected one of "
                             f"{', '.join(BOX_FORMATS)} and one of {', '.join(BOX_UNITS)}")

    @classmethod
    def check_layout(cls, opts: dict, layout: str, heads) -> None:
        if layout == "boxes" and opts.get("box_columns") is None:
            raise ValueError("box_columns: required for a detection task: the four columns of each box, like "
                             "[x1, y1, x2, y2]")

    @property
    def label_columns(self) -> list[str]:
        if self.task.kind.label_layout in ("class", "boxes"):
            return [self.opts["label_column"]]
        return [str(c) for c in (self.opts["label_columns"] or self.task.heads)]

    def locate(self, data: str | Path) -> tuple[Path, Path]:
        data = Path(data).expanduser().resolve()
        if data.is_file():
            self.opts["file"] = data.name
            return data.parent, data.parent
        return super().locate(data)

    def describe(self) -> str:
        return f"{self.opts['file']} ({self.summary})"

    def looks_like(self, folder: Path) -> bool:
        return (folder / self.opts["file"]).is_file()

    def read(self, layout: Path, root: Path) -> ReadResult:
        path = layout / self.opts["file"]
        result = ReadResult([])
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                rows = list(csv.DictReader(f))
                header = list(rows[0]) if rows else []
        except (UnicodeDecodeError, csv.Error) as e:
            result.problems.append(f"{path}: cannot read as a UTF-8 CSV ({e})")
            return result
        group = [self.opts["group_column"]] if self.opts["group_column"] else []
        wanted = ([self.opts["image_column"], self.opts["mask_column"], *group] if self.reads_masks else
                  [self.opts["image_column"], *self.label_columns, *group, *(self.opts["box_columns"] or [])])
        missing = [c for c in wanted if c not in header]
        if not rows or missing:
            result.problems.append(f"{path}: " + (f"no column(s) {missing}; its header is {header}" if rows
                                                  else "no rows"))
            return result
        image_root = (layout / self.opts["image_root"]).resolve()
        if self.task.kind.label_layout == "boxes":
            self._box_rows(rows, path, image_root, root, result)
            return result
        seen: dict[Path, int] = {}
        for number, row in enumerate(rows, 2):
            where = f"{path}:{number}"
            problems_before = len(result.problems)
            image = self._image(row, image_root, where, seen, number, result.problems)
            if self.reads_masks:
                self._mask_row(row, image, image_root, root, where, result, problems_before)
                continue
            labels = self._labels(row, where, result.problems)
            group = self._group(row, where, result.problems)
            boxes = self._boxes(row, image, where, result.problems) if image is not None else ()
            if len(result.problems) > problems_before:
                if image is not None:
                    result.unlabelled.append(image)
                continue
            result.samples.append(Sample(image, relative_key(image, root), labels, boxes, group))
        return result

    def _box_rows(self, rows, path: Path, image_root: Path, root: Path, result: ReadResult) -> None:
        """A detection task's CSV: one row per box, several per image; one sample per image."""
        images: dict[Path, list] = {}      # image -> its (line number, row)
        for number, row in enumerate(rows, 2):
            image = self._file(row, self.opts["image_column"], "image", image_root, f"{path}:{number}",
                               result.problems)
            if image is not None:
                images.setdefault(image, []).append((number, row))
        for image, lines in images.items():
            before = len(result.problems)
            numbers = ", ".join(str(number) for number, _ in lines)
            named = lines[0][1][self.opts["image_column"]].strip()
            where = f"{path}, image {named!r} (line{'s' if len(lines) > 1 else ''} {numbers})"
            groups = {self._group(row, f"{path}:{number}", result.problems) for number, row in lines}
            if len(groups) > 1:
                listed = ", ".join(sorted(map(str, groups)))
                result.problems.append(f"{where}: its rows name {len(groups)} groups ({listed}); every row of one "
                                       "image names its group")
            size = image_size(image, result.problems, "remove its rows")
            boxes, labels = [], []
            for number, row in lines:
                values = [(row[c] or "").strip() for c in self.opts["box_columns"]]
                if not any(values):
                    continue                                      # the image is listed, without objects
                label = self._class_index(row, f"{path}:{number}", result.problems)
                box = self._pixels(values, size, f"{path}:{number}", result.problems)
                if box is not None and label >= 0:
                    boxes.append(box)
                    labels.append(label)
            if size is not None:
                group = groups.pop() if len(groups) == 1 else None
                box_sample(self.task, image, root, size, boxes, labels, where, group, result,
                           keep=len(result.problems) == before)

    def _pixels(self, values: list[str], size: tuple[int, int] | None, where: str, problems: list[str]):
        """The box of four cells as (x1, y1, x2, y2) pixels of the upright image of ``size`` (``box_format``,
        ``box_units``); None when they are not four numbers (a problem), or when relative units meet an
        image of no known size."""
        try:
            box = [float(v) for v in values]
        except ValueError:
            box = [math.nan]
        if not all(math.isfinite(v) for v in box):  # nan and inf parse as floats, and are no pixel
            problems.append(f"{where}: box {values} is not four numbers ({BOX_FORMATS[self.opts['box_format']]}, "
                            f"{self.opts['box_units']})")
            return None
        x1, y1, a, b = box
        x2, y2 = (x1 + a, y1 + b) if self.opts["box_format"] == "xywh" else (a, b)
        if self.opts["box_units"] == "relative":
            if size is None:
                return None
            width, height = size
            return x1 * width, y1 * height, x2 * width, y2 * height
        return x1, y1, x2, y2

    def _mask_row(self, row, image: Path | None, image_root: Path, root: Path, where: str, result: ReadResult,
                  problems_before: int) -> None:
        """A segmentation task's row: its mask and group; the sample when the row has no problem."""
        mask = self._file(row, self.opts["mask_column"], "mask", image_root, where, result.problems)
        group = self._group(row, where, result.problems)
        checked = len(result.problems)
        segmentation_sample(self.task, image, mask, root, group, result, keep=checked == problems_before)
        result.problems[checked:] = [f"{where}: {p}" for p in result.problems[checked:]]  # name the line too

    def _file(self, row, column: str, what: str, image_root: Path, where: str, problems: list[str]) -> Path | None:
        """The image file named in ``column``, relative to ``image_root``; None (a problem) when there is none."""
        value = (row[column] or "").strip()
        if not value:
            problems.append(f"{where}: empty {column}")
            return None
        path = (image_root / value).resolve()
        if not is_regular_file(path):
            problems.append(f"{where}: {what} {value!r} not found (looked for {path})")
            return None
        if not is_image_file(path):
            problems.append(f"{where}: {value!r} is not an image file (jpg/jpeg/png/bmp/tif)")
            return None
        return path

    def _image(self, row, image_root: Path, where: str, seen: dict, number: int, problems: list[str]):
        image = self._file(row, self.opts["image_column"], "image", image_root, where, problems)
        if image is None:
            return None
        value = (row[self.opts["image_column"]] or "").strip()
        if image in seen:
            problems.append(f"{where}: image {value!r} is already on line {seen[image]}; one row per image")
            return None
        seen[image] = number
        return image

    def _class_index(self, row, where: str, problems: list[str]) -> int:
        """The class of a row (``label_column``, valued as ``class_values``); -1 (a problem) when unknown."""
        column = self.opts["label_column"]
        values = [str(v) for v in (self.opts["class_values"] or self.task.heads)]
        value = (row[column] or "").strip()
        if value not in values:
            problems.append(f"{where}: {column}={value!r} is not one of the classes ({', '.join(values)})")
            return -1
        return values.index(value)

    def _labels(self, row, where: str, problems: list[str]) -> tuple[int, ...]:
        if self.task.kind.label_layout == "class":
            return (self._class_index(row, where, problems),)
        labels = []
        for column in self.label_columns:
            label = binary_label(row[column] or "")
            if label is None:
                problems.append(f"{where}: {column}={row[column].strip()!r} is not 0, 1 or empty (unknown)")
            labels.append(UNKNOWN if label is None else label)
        return tuple(labels)

    def _group(self, row, where: str, problems: list[str]) -> str | None:
        column = self.opts["group_column"]
        if not column:
            return None
        value = (row[column] or "").strip()
        if not value:
            problems.append(f"{where}: empty {column}; every image needs its group (patient id)")
        return value

    def _boxes(self, row, image: Path, where: str, problems: list[str]):
        """A classification row's lesion box, normalised (xc, yc, w, h) for box-guided CutMix, clipped to the
        image; () without one, and a problem when it is not inside the image."""
        columns = self.opts["box_columns"]
        if not columns:
            return ()
        values = [(row[c] or "").strip() for c in columns]
        if not any(values):
            return ()
        size = image_size(image, [], "")     # an unreadable image is reported when every image is decoded
        box = self._pixels(values, size, where, problems)
        if box is None or size is None:
            return ()
        width, height = size
        x0, y0, x1, y1 = box
        x0, x1 = max(0.0, x0), min(float(width), x1)
        y0, y1 = max(0.0, y0), min(float(height), y1)
        if x1 <= x0 or y1 <= y0:
            problems.append(f"{where}: box {values} is empty inside the {width}x{height} image")
            return ()
        return (((x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height),)
