"""``yolo``: images in folders named ``images/`` and one label file per image in the ``labels/`` beside them,
anywhere below the layout folder (Ultralytics, Darknet, Roboflow's YOLO export, the BI-RADS competition).

::

    <subfolder>/images/train/<stem>.jpg   and  <subfolder>/labels/train/<stem>.txt       (Ultralytics)
    <subfolder>/<class>/images/<stem>.png and  <subfolder>/<class>/labels/<stem>.txt     (BI-RADS)
    one line per object: "<class id> xc yc w h", centre and size relative to the image's width and height

An image's label file is its path with the last folder named ``images`` replaced by ``labels`` and its
extension by ``.txt`` (Ultralytics' rule). Options (and those of every box reader, ``box_readers``):

* ``images``, ``labels`` (defaults ``images`` and ``labels``): the two folder names.
* ``index_base``: the id of the first class in the files, 0 (default) or 1 (the BI-RADS files write 1..6).
* ``data_yaml`` (default ``data.yaml``, in the layout folder): when it exists, its ``names:`` (a list, or a
  mapping id -> name) names the ids, and an id's class is the task's class of that name (``class_names``
  maps those names otherwise). Without it, the id ``index_base + k`` is the task's k-th class
  (``class_names`` then maps the ids as the files write them: ``{1: lesion, 2: lesion}``).
* ``one_class``: true: every box is of the task's one class, whatever its id (a lesion detector over the
  BI-RADS labels); ``class_names`` and ``names:`` are not read.

An empty or missing label file is an image without objects; an ``images/`` folder with no ``labels/``
folder beside it at all is a problem (a misnamed label folder would otherwise make every image a negative).
A line of a polygon (``<class id> x1 y1 x2 y2 ...``, Ultralytics' segmentation labels) gives the box around
its points. Reported, all at once: a label file without its image, two images with one label file, a line
that is not a class id and four numbers (or a polygon), an unknown class id, what ``check_boxes`` refuses
(a coordinate above 2 is taken for pixels where fractions of the image belong).
"""
from __future__ import annotations

from pathlib import Path

import yaml

from ..images import is_image_file, is_regular_file
from .base import image_size, log, visible_files
from .box_readers import BOX_OPTIONS, BoxReader
from .box_sample import box_sample
from .records import ReadResult

MAX_YAML_BYTES = 1024 * 1024   # a data.yaml is a few lines
NOT_RELATIVE = 2   # a relative coordinate this far out is no box partly outside its image: pixels, not fractions


class Yolo(BoxReader):
    name = "yolo"
    options = {"subfolder": "", "images": "images", "labels": "labels", "index_base": 0, "data_yaml": "data.yaml",
               "one_class": False, **BOX_OPTIONS}
    summary = "images/ and labels/ folders (YOLO label files)"

    def __init__(self, task):
        super().__init__(task)
        self.yaml_names: dict[str, str] = {}     # class id as the files write it -> its name in data.yaml

    @classmethod
    def check_options(cls, opts: dict, heads) -> None:
        if opts["index_base"] not in (0, 1) or isinstance(opts["index_base"], bool):
            raise ValueError(f"index_base {opts['index_base']!r}: 0 or 1, the id of the first class in the files")
        if not opts["images"] or not opts["labels"] or opts["images"] == opts["labels"]:
            raise ValueError(f"images {opts['images']!r} and labels {opts['labels']!r}: expected two different "
                             "folder names")
        if opts["one_class"] and opts.get("class_names") is not None:
            raise ValueError("one_class: true gives every box the task's one class; class_names has nothing to map")
        super().check_options(opts, heads)

    @classmethod
    def box_heads(cls, opts: dict, heads) -> tuple[set[str], str]:
        if not opts["one_class"]:
            return super().box_heads(opts, heads)
        return {next(iter(cls._box_classes(opts, heads)))}, "one_class: true gives every box one class"

    @classmethod
    def check_layout(cls, opts: dict, layout: str, heads) -> None:
        if opts["one_class"] and len(cls._box_classes(opts, heads)) != 1:
            raise ValueError(f"one_class: true needs a task of one class (besides no_box_class), not "
                             f"{len(cls._box_classes(opts, heads))}")
        super().check_layout(opts, layout, heads)

    @staticmethod
    def _box_classes(opts: dict, heads) -> list[str]:
        no_box = opts.get("no_box_class")
        return [head for head in heads if no_box is None or head != str(no_box)]

    def describe(self) -> str:
        return super().describe().replace("images/ and labels/", f"{self.opts['images']}/ and {self.opts['labels']}/")

    def looks_like(self, folder: Path) -> bool:
        return folder.is_dir() and any(self.opts["images"] in p.relative_to(folder).parts[:-1] and is_image_file(p)
                                       for p in visible_files(folder))

    def read(self, layout: Path, root: Path) -> ReadResult:
        result = ReadResult([])
        images, label_files = self._files(layout, result)
        groups = self.groups_of({image: image.relative_to(layout).as_posix() for image in images.values()},
                                        layout, result.problems)
        if groups is None:
            return result
        ids = self._id_map(self._yaml_names(layout / self.opts["data_yaml"], result.problems))
        one = self.task.heads.index(self._box_classes(self.opts, self.task.heads)[0]) if self.opts["one_class"] \
            else None
        for label, image in images.items():
            before = len(result.problems)
            size = image_size(image, result.problems, "remove it and its label file")
            objects = _read_label_file(label, result.problems) if label in label_files else []
            if one is not None:
                ids = {name: one for name, _ in objects}
            boxes, labels = self.sort_objects(objects, ids, label, result.problems)
            if size is not None:
                width, height = size
                pixels = [(x1 * width, y1 * height, x2 * width, y2 * height) for x1, y1, x2, y2 in boxes]
                box_sample(self.task, image, root, size, pixels, labels, label, groups[image], result, self.no_box,
                           keep=len(result.problems) == before)
        for label in sorted(label_files - set(images)):
            result.problems.append(f"{label}: label file without an image (looked for {label.stem}.<ext> in the "
                                   f"{self.opts['images']}/ folder beside it); add the image or remove the file")
        self.report_left_out()
        return result

    def _files(self, layout: Path, result: ReadResult) -> tuple[dict[Path, Path], set[Path]]:
        """({label file path -> its image} for every image in an images/ folder, the label files there are).
        Two images with one label file, an images/ folder without its labels/ folder (its images are not
        read), no images at all: problems."""
        images_name, labels_name, problems = self.opts["images"], self.opts["labels"], result.problems
        images: dict[Path, Path] = {}
        label_files: set[Path] = set()
        label_folders: dict[Path, Path] = {}      # labels/ folder -> the images/ folder it belongs to
        for path in visible_files(layout):
            parts = path.relative_to(layout).parts
            if path.suffix.lower() == ".txt" and labels_name in parts[:-1]:
                label_files.add(path)
                continue
            if images_name not in parts[:-1]:
                continue                          # data.yaml, a README, a preview: not the data
            if not is_image_file(path) or not is_regular_file(path):
                log.warning("%s: not an image file (jpg/jpeg/png/bmp/tif), ignored", path)
                continue
            at = len(parts) - 2 - parts[-2::-1].index(images_name)   # the last folder named images/
            label = layout.joinpath(*parts[:at], labels_name, *parts[at + 1:-1], path.stem + ".txt")
            label_folders.setdefault(layout.joinpath(*parts[:at], labels_name), layout.joinpath(*parts[:at + 1]))
            if label in images:
                problems.append(f"{path}: same name as {images[label].name}; rename one so each label file matches "
                                "one image")
                continue
            images[label] = path
        if not images:
            problems.append(f"{layout}: no images in a folder named {images_name}/")
        for labels, images_dir in sorted(label_folders.items()):
            if not labels.is_dir():
                problems.append(f"{images_dir}: no {labels_name}/ folder beside it ({labels}); an image without a "
                                "label file has no objects, but a folder of images without any is a wrong layout or "
                                "folder name")
                refused = [label for label in images if label.parent.is_relative_to(labels)]
                result.unlabelled += [images.pop(label) for label in refused]
        return images, label_files

    def _yaml_names(self, path: Path, problems: list[str]) -> dict[int, str] | None:
        """data.yaml's ``names`` (id -> name, ids as the list counts them), or None without the file (or with
        one_class, which reads no names)."""
        if self.opts["one_class"] or not path.is_file():
            return None
        try:
            if path.stat().st_size > MAX_YAML_BYTES:
                raise yaml.YAMLError(f"{path.stat().st_size} bytes, more than a data.yaml holds")
            raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_NoAliases)
        except (yaml.YAMLError, UnicodeDecodeError, OSError) as e:
            problems.append(f"{path}: cannot read it ({e}); fix it, or remove it to take the class ids in the "
                            "order of the task's classes")
            return None
        names = raw.get("names") if isinstance(raw, dict) else None
        if isinstance(names, list):
            return {i: str(name) for i, name in enumerate(names)}
        if isinstance(names, dict) and all(isinstance(k, int) for k in names):
            return {k: str(name) for k, name in names.items()}
        problems.append(f"{path}: no names: list (or mapping of class id to name); add it, or remove the file to "
                        "take the class ids in the order of the task's classes")
        return None

    def _id_map(self, names: dict[int, str] | None) -> dict[str, int | None]:
        """The class id as a file writes it -> index into the task's heads (None: left out)."""
        base = self.opts["index_base"]
        if names is None:
            return self.name_map({str(base + i): i for i in range(len(self.task.heads))})
        by_name = self.name_map()
        self.yaml_names = {str(base + k): name for k, name in names.items()}
        return {raw: by_name[name] for raw, name in self.yaml_names.items() if name in by_name}

    def unknown_class(self, where, name: str, count: int, names: dict) -> str:
        lines = f"{count} line{'s' if count > 1 else ''}"
        named = self.yaml_names.get(name)
        if named is not None:
            return (f"{where}: class id {name} ({lines}) is {named!r} in {self.opts['data_yaml']}, not one of the "
                    f"task's classes; name it as the task does, or map it to one with class_names")
        return (f"{where}: class id {name} ({lines}) is not one of the ids the task reads "
                f"({', '.join(names) or 'none'}); "
                "check index_base, or map the ids with class_names")


class _NoAliases(yaml.SafeLoader):
    """A data.yaml has no use for YAML aliases, which can expand a few bytes into gigabytes."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("YAML aliases (*name) are not allowed here")
        return super().compose_node(parent, index)


def _read_label_file(path: Path, problems: list[str]) -> list[tuple[str, tuple[float, float, float, float]]]:
    """(class id as written, (x1, y1, x2, y2) relative to the image) of each line of a YOLO label file."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        problems.append(f"{path}: cannot read this file ({e.strerror or e})")
        return []
    objects = []
    for number, line in enumerate(text.splitlines(), 1):
        tokens = line.split()
        if not tokens:
            continue
        try:
            values = [float(t) for t in tokens]
        except ValueError:
            values = []
        polygon = len(values) >= 7 and len(values) % 2
        if len(values) != 5 and not polygon or not values[0].is_integer():
            problems.append(f"{path}:{number}: {line.strip()[:80]!r} is not '<class id> xc yc w h' (a whole class id "
                            "and four numbers relative to the image) nor a polygon '<class id> x1 y1 x2 y2 ...'")
            continue
        if max(map(abs, values[1:])) > NOT_RELATIVE:
            problems.append(f"{path}:{number}: {line.strip()[:80]!r}: a coordinate above {NOT_RELATIVE}; a YOLO label "
                            "file gives them relative to the image's width and height (0 to 1), not in pixels")
            continue
        if polygon:
            xs, ys = values[1::2], values[2::2]
            box = (min(xs), min(ys), max(xs), max(ys))
        else:
            xc, yc, w, h = values[1:]
            box = (xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2)
        objects.append((str(int(values[0])), box))
    return objects
