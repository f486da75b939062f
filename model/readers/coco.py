"""``coco``: a COCO instances JSON beside a folder of images (CVAT's COCO export, Roboflow's, the COCO sets).

::

    <subfolder>/annotations/instances_default.json    {"images": [{"id", "file_name", "width", "height"}],
                                                        "annotations": [{"image_id", "category_id", "bbox",
                                                                         "iscrowd"}], "categories": [{"id", "name"}]}
    <subfolder>/images/<file_name>

Options (and those of every box reader, ``box_readers``): ``annotations`` (the JSON, relative to the layout
folder; default ``annotations/instances_default.json``, CVAT's name) and ``images`` (the folder the
``file_name`` of each image is relative to; default ``images``; ``.`` for a Roboflow export, whose JSON lies
among its images). A ``file_name`` that is an absolute path names the labeller's machine: its last part is
looked for in ``images``.

The images are those the JSON lists; an image listed without annotations has no objects, and an image in
the folder that the JSON does not list is not part of the set (one warning counts them). A box is COCO's
``bbox`` ``[x, y, w, h]`` in pixels, ``[x, x + w)``, the convention of ``model.boxes`` as it is. A category's
class is its ``name``. Crowd annotations (``iscrowd: 1``) are left out with one warning: each marks a crowd
of objects as one region, which COCO's evaluation ignores rather than scores, and a detector trained to find
it as one object learns the wrong box (torchvision's detection reference leaves them out too). An image's
``width`` and ``height``, when given, must be its header's (upright), as in ``voc``. Reported, all at once:
an unreadable or malformed JSON, a listed image that is not there, two entries for one image, an annotation
of an unknown image or category, a bbox that is not four numbers, a category name the task does not read
(once per name, with its count), what ``check_boxes`` refuses, a size mismatch.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path, PurePath

from ..images import is_image_file, is_regular_file
from .base import image_size, log
from .box_readers import BOX_OPTIONS, BoxReader, size_mismatch
from .box_sample import box_sample
from .records import ReadResult

SHOWN = 3   # images named beside an unknown category


class Coco(BoxReader):
    name = "coco"
    options = {"subfolder": "", "annotations": "annotations/instances_default.json", "images": "images",
               **BOX_OPTIONS}
    summary = "a COCO instances JSON (annotations/instances_default.json) beside images/"
    group_text_is = "each image's file_name in the JSON"

    @classmethod
    def check_options(cls, opts: dict, heads) -> None:
        if not opts["annotations"] or not opts["images"]:
            raise ValueError("annotations and images: the JSON file and the image folder, relative to the layout")
        super().check_options(opts, heads)

    def describe(self) -> str:
        return super().describe().replace("annotations/instances_default.json", self.opts["annotations"]).replace(
            "images/", f"{self.opts['images']}/")

    def looks_like(self, folder: Path) -> bool:
        return (folder / self.opts["annotations"]).is_file() and (folder / self.opts["images"]).is_dir()

    def read(self, layout: Path, root: Path) -> ReadResult:
        result = ReadResult([])
        path, images_dir = layout / self.opts["annotations"], layout / self.opts["images"]
        listed, categories, by_image = self._load(path, result.problems)
        if listed is None:
            return result
        entries = self._images(listed, images_dir, path, result.problems)
        groups = self.groups_of({image: name for image, (_, name, _) in entries.items()}, path, result.problems)
        if groups is None:
            return result
        names = self.name_map()
        unknown: dict[str, list] = defaultdict(list)      # category name -> the file_name of each annotation
        for image, (image_id, file_name, declared) in entries.items():
            before = len(result.problems)
            size = image_size(image, result.problems, "remove it from the JSON")
            if size is not None and declared is not None and declared != size:
                result.problems.append(size_mismatch(f"{path} ({file_name})", declared, size, image))
            objects = [(categories[c], box) for c, box in by_image.get(image_id, [])]
            for name, _ in objects:
                if name not in names:
                    unknown[name].append(file_name)
            known = [(name, box) for name, box in objects if name in names]
            boxes, labels = self.sort_objects(known, names, path, result.problems)
            if size is not None:
                box_sample(self.task, image, root, size, boxes, labels, f"{path} ({file_name})", groups[image],
                           result, self.no_box, keep=len(result.problems) == before and len(known) == len(objects))
        for name, files in unknown.items():
            shown = sorted(set(files))
            result.problems.append(
                f"{path}: category {name!r} ({len(files)} annotation{'s' if len(files) > 1 else ''} on {len(shown)} "
                f"image{'s' if len(shown) > 1 else ''}, e.g. {', '.join(shown[:SHOWN])}) is not one the task reads "
                f"({', '.join(map(repr, names))}); name it as the task's classes do, or map it to one with class_names")
        self._unlisted(images_dir, set(entries))
        self.report_left_out()
        return result

    def _load(self, path: Path, problems: list[str]):
        """(the JSON's image entries, category id -> name, image id -> [(category id, xyxy box)]); the first
        None when the file cannot be used at all."""
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            problems.append(f"{path}: cannot read this JSON ({e}); export the annotations again")
            return None, {}, {}
        lists = {key: data.get(key) if isinstance(data, dict) else None
                 for key in ("images", "annotations", "categories")}
        missing = [key for key, value in lists.items() if not isinstance(value, list)]
        if missing:
            problems.append(f"{path}: not a COCO instances file: no {', '.join(missing)} list (a COCO file has images, "
                            "annotations and categories)")
            return None, {}, {}
        categories = {}
        for entry in lists["categories"]:
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not _is_id(entry.get("id")):
                problems.append(f"{path}: category {entry!r} has no id and name")
            elif entry["id"] in categories:
                problems.append(f"{path}: two categories with id {entry['id']!r}")
            else:
                categories[entry["id"]] = entry["name"].strip()
        ids = {entry.get("id") for entry in lists["images"] if isinstance(entry, dict) and _is_id(entry.get("id"))}
        by_image: dict = defaultdict(list)
        crowd = 0
        for number, entry in enumerate(lists["annotations"], 1):
            said = f"{path}: annotation {number}" + (f" (id {entry['id']})" if isinstance(entry, dict) and "id" in entry
                                                     else "")
            if not isinstance(entry, dict):
                problems.append(f"{said} is not a mapping")
                continue
            if entry.get("iscrowd"):
                crowd += 1
                continue
            if not _is_id(entry.get("image_id")) or entry["image_id"] not in ids:
                problems.append(f"{said}: image_id {entry.get('image_id')!r} is not one of the images listed")
            elif not _is_id(entry.get("category_id")) or entry["category_id"] not in categories:
                problems.append(f"{said}: category_id {entry.get('category_id')!r} is not one of the categories")
            elif not _is_box(entry.get("bbox")):
                problems.append(f"{said}: bbox {entry.get('bbox')!r} is not four numbers [x, y, width, height]")
            else:
                x, y, w, h = entry["bbox"]
                by_image[entry["image_id"]].append((entry["category_id"], (x, y, x + w, y + h)))
        if crowd:
            log.warning("%s: %d crowd annotation(s) (iscrowd 1) left out: each marks a crowd of objects as one "
                        "region, not one object", path, crowd)
        return lists["images"], categories, by_image

    @staticmethod
    def _images(listed, images_dir: Path, path: Path, problems: list[str]) -> dict[Path, tuple]:
        """{image path: (its id, its file_name, its declared (width, height) or None)} of the listed images
        that are there."""
        entries: dict[Path, tuple] = {}
        seen = set()
        for entry in listed:
            file_name = entry.get("file_name") if isinstance(entry, dict) else None
            if not isinstance(file_name, str) or not file_name or not _is_id(entry.get("id")):
                problems.append(f"{path}: image entry {entry!r} has no id and file_name")
                continue
            relative = PurePath(file_name).name if PurePath(file_name).is_absolute() else file_name
            image = images_dir / relative
            if entry["id"] in seen:
                problems.append(f"{path}: two images with id {entry['id']!r} ({file_name})")
            elif image in entries:
                problems.append(f"{path}: image {file_name!r} is listed twice")
            elif not is_regular_file(image) or not is_image_file(image):
                problems.append(f"{path}: image {file_name!r} not found (looked for {image})")
            else:
                entries[image] = (entry["id"], file_name, _declared_size(entry))
                seen.add(entry["id"])
        if not entries and not problems:
            problems.append(f"{path}: lists no images")
        return entries

    def _unlisted(self, images_dir: Path, listed: set[Path]) -> None:
        if not images_dir.is_dir():
            return
        others = [p for p in images_dir.iterdir() if is_image_file(p) and p not in listed]
        if others:
            log.warning("%s: %d image(s) the JSON does not list (%s...), left out", images_dir, len(others),
                        sorted(others)[0].name)


def _is_id(value) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _is_box(value) -> bool:
    return (isinstance(value, list) and len(value) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))


def _declared_size(entry: dict) -> tuple[int, int] | None:
    width, height = entry.get("width"), entry.get("height")
    if isinstance(width, (int, float)) and isinstance(height, (int, float)) and width > 0 and height > 0:
        return round(width), round(height)
    return None
