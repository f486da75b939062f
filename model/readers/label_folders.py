"""``label-folders``: one folder of images and one folder of label files per label (multi-label).

::

    <subfolder>/images/<stem>.png|jpg
    <subfolder>/<label>_labels/<stem>.txt     first token 0 or 1, then optionally a box "xc yc w h"

Options: ``images`` (the image folder's name) and ``label_folder`` (the pattern of a label's folder name,
``{label}`` standing for the label; default ``{label}_labels``). An empty or missing label file means the
label is unknown for that image: it is masked out of the loss and the metric, never taken as 0.
"""
from __future__ import annotations

from pathlib import Path

from ..metric import UNKNOWN, binary_label
from .base import ReadResult, Reader, Sample, list_images, log, parse_box, relative_key, unexpected_folders


class LabelFolders(Reader):
    name = "label-folders"
    layouts = ("columns",)
    options = {"subfolder": "", "images": "images", "label_folder": "{label}_labels"}
    summary = "images/ and one folder of label files per label"

    @classmethod
    def check_options(cls, opts: dict, heads) -> None:
        if "{label}" not in opts["label_folder"]:
            raise ValueError(f"label_folder {opts['label_folder']!r} must contain {{label}}, e.g. '{{label}}_labels'")

    def folder_of(self, label: str) -> str:
        return self.opts["label_folder"].replace("{label}", label)

    def looks_like(self, folder: Path) -> bool:
        return (folder / self.opts["images"]).is_dir()

    def read(self, layout: Path, root: Path) -> ReadResult:
        result = ReadResult([])
        expected = [self.opts["images"], *(self.folder_of(label) for label in self.task.heads)]
        unexpected_folders(layout, expected, "image and label folders", result.problems)
        images_dir = layout / self.opts["images"]
        images = list_images(images_dir, result.problems)
        if not images:
            result.problems.append(f"{images_dir}: no images")
        label_files = {}
        for label in self.task.heads:
            folder = layout / self.folder_of(label)
            if not folder.is_dir():
                log.warning("%s: folder missing; %s is unknown for every image", folder, label)
            label_files[label] = {p.stem: p for p in sorted(folder.glob("*.txt"))} if folder.is_dir() else {}
            for stem in sorted(set(label_files[label]) - set(images)):
                result.problems.append(f"{label_files[label][stem]}: label file without an image in {images_dir}")
        unknown = dict.fromkeys(self.task.heads, 0)
        for stem, path in images.items():
            values, boxes = [], []
            for label in self.task.heads:
                value, box = _read_label(label_files[label].get(stem), result.problems)
                values.append(value)
                unknown[label] += value == UNKNOWN
                if box is not None and box not in boxes:
                    boxes.append(box)
            result.samples.append(Sample(path, relative_key(path, root), tuple(values), tuple(boxes)))
        if any(unknown.values()):
            log.info("labels unknown (empty or missing file), masked out of the loss: %s",
                     ", ".join(f"{k} {v}" for k, v in unknown.items()))
        return result


def _read_label(path: Path | None, problems: list[str]):
    if path is None:
        return UNKNOWN, None
    tokens = path.read_text(encoding="utf-8", errors="replace").split()
    if not tokens:
        return UNKNOWN, None
    label = binary_label(tokens[0])
    if label is None:
        problems.append(f"{path}: first token {tokens[0]!r} is not 0 or 1")
        return UNKNOWN, None
    return label, parse_box(tokens[1:5])
