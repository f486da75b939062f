"""``yolo-folders``: one folder per class, each with images and YOLO-style label files.

::

    <subfolder>/<class folder>/images/<stem>.png|jpg
    <subfolder>/<class folder>/labels/<stem>.txt      one line per lesion: "<class id> xc yc w h" (normalised)

Options: ``class_folders`` (one per class, in the order of ``classes``; default the class names),
``class_ids`` (the ids the label files use, in the same order; default 0, 1, ...), ``images`` and
``labels`` (the two subfolder names). Every line of a label file must name its folder's class; the boxes
guide CutMix.
"""
from __future__ import annotations

from pathlib import Path

from .base import ReadResult, Sample, list_images, log, parse_box, relative_key
from .class_folders import ClassFolders


class YoloFolders(ClassFolders):
    """Class folders as ``class-folders`` reads them, each holding images/ and YOLO labels/."""

    name = "yolo-folders"
    layouts = ("class",)
    options = {"subfolder": "", "class_folders": None, "class_ids": None, "images": "images", "labels": "labels"}
    summary = "one folder per class, each holding images/ and labels/"

    @classmethod
    def check_options(cls, opts: dict, heads) -> None:
        for key in ("class_folders", "class_ids"):
            value = opts.get(key)
            if value is not None and (not isinstance(value, list) or len(value) != len(heads)):
                raise ValueError(f"{key}: expected a list with one entry per class ({len(heads)})")
        if opts.get("class_ids") is not None and not all(isinstance(v, int) for v in opts["class_ids"]):
            raise ValueError("class_ids: expected whole numbers, as the label files write them")

    @property
    def ids(self) -> list[int]:
        return self.opts["class_ids"] or list(range(len(self.task.heads)))

    def missing(self, folder: Path, label: int, result: ReadResult) -> None:
        log.warning("%s: class folder missing; class %s has no training images", folder, self.task.heads[label])

    def read(self, layout: Path, root: Path) -> ReadResult:
        result = ReadResult([])
        for label, folder in self.class_folders(layout, result):
            name = folder.name
            images_dir, labels_dir = folder / self.opts["images"], folder / self.opts["labels"]
            images = list_images(images_dir, result.problems) if images_dir.is_dir() else {}
            labels = {p.stem: p for p in sorted(labels_dir.glob("*.txt"))} if labels_dir.is_dir() else {}
            if not images:
                result.problems.append(f"{folder}: class folder has no images (expected {name}/{self.opts['images']}/"
                                       "*.png|jpg)")
            for stem in sorted(set(labels) - set(images)):
                result.problems.append(f"{labels[stem]}: label file without an image in {images_dir}")
            for stem, path in images.items():
                if stem not in labels:
                    result.problems.append(f"{path}: no label file {labels_dir / (stem + '.txt')}")
                    result.unlabelled.append(path)
                    continue
                boxes = self._boxes(labels[stem], label, result.problems)
                if boxes is None:
                    result.unlabelled.append(path)
                else:
                    result.samples.append(Sample(path, relative_key(path, root), (label,), boxes))
        return result

    def _boxes(self, path: Path, expected: int, problems: list[str]):
        """The boxes of a label file whose every line names class ``expected``; None (and a problem) otherwise."""
        lines = [ln.split() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        ids = self.ids
        if not lines:
            problems.append(f"{path}: empty label file (expected '<class id> xc yc w h', class id one of "
                            f"{', '.join(map(str, ids))})")
            return None
        classes, boxes = set(), []
        for number, tokens in enumerate(lines, 1):
            try:
                raw = float(tokens[0])
            except ValueError:
                problems.append(f"{path}:{number}: cannot parse {' '.join(tokens)!r} (expected '<class id> xc yc w h')")
                return None
            if raw not in ids:
                problems.append(f"{path}:{number}: class id {tokens[0]} is not one of {', '.join(map(str, ids))}")
                return None
            classes.add(ids.index(int(raw)))
            box = parse_box(tokens[1:])
            if box is not None:
                boxes.append(box)
        if len(classes) > 1:
            problems.append(f"{path}: lines disagree on the class ({sorted(ids[c] for c in classes)}); "
                            "keep one class per image")
            return None
        (label,) = classes
        if label != expected:
            problems.append(f"{path}: class id {ids[label]} ({self.folders[label]}) but the file lies in "
                            f"{self.folders[expected]}; move the image or correct the label")
            return None
        return tuple(boxes)
