"""What the readers of box annotations (``voc``, ``yolo``, ``coco``) share: the options every one of them
takes, the checks of those options against the task, and the mapping of the files' class names to the
task's classes.

They feed detection tasks (label layout ``boxes``) and classification tasks alike (``box_sample`` says
how a classification task reads an image's boxes). Options:

* ``class_names``: each class name the files use -> one of the task's classes, or null to leave that
  name's objects out (a one-class detector over a many-class set, a name the task does not want; several
  names may map to one class). When given it is the whole mapping: a name it does not list is unknown.
  Default: the task's classes, named as the files name them.
* ``no_box_class`` (single-label tasks only): the class of an image without boxes, ``none`` for a task
  ``classes: [none, haemorrhage]``. Without it an image without boxes is a problem.
* ``group_pattern``: a regular expression searched in each image's path relative to the layout folder; its
  first capture group (or the whole match) is the image's group (patient). Without it every image is its
  own group.

A class name the mapping does not know is a problem naming the file, the name and how many objects carry
it, listed with every other.
"""
from __future__ import annotations

from collections import Counter

from .base import GroupedByPattern, Reader, check_group_pattern, log

BOX_OPTIONS = {"class_names": None, "no_box_class": None, "group_pattern": None}
LAYOUT_NAMES = {"boxes": "detection", "columns": "multi-label", "class": "single-label"}


class BoxReader(GroupedByPattern, Reader):
    layouts = ("boxes", "class", "columns")
    group_text_is = "each image's path relative to the layout folder, the subfolder: option not included"

    def __init__(self, task):
        super().__init__(task)
        no_box = self.opts["no_box_class"]
        self.no_box = None if no_box is None else task.heads.index(str(no_box))
        self.left_out = Counter()    # class name -> objects left out (class_names maps it to null)

    @classmethod
    def check_options(cls, opts: dict, heads) -> None:
        check_group_pattern(opts.get("group_pattern"))
        names = opts.get("class_names")
        if names is None:
            return
        if not isinstance(names, dict) or not names:
            raise ValueError("class_names: expected a mapping of each class name in the files to one of the "
                             "task's classes (or to null, to leave its objects out), like {rbc: RBC}")
        for name, head in names.items():
            if head is not None and str(head) not in heads:
                raise ValueError(f"class_names: {name}: {head!r} is not one of the task's classes "
                                 f"({', '.join(heads)})")

    @classmethod
    def box_heads(cls, opts: dict, heads) -> tuple[set[str], str]:
        """(the task's classes a box can have, the option that says so)."""
        names = opts.get("class_names")
        if names is None:
            return set(heads), ""
        return {str(head) for head in names.values() if head is not None}, "class_names maps no name to it"

    @classmethod
    def check_layout(cls, opts: dict, layout: str, heads) -> None:
        no_box = None if opts.get("no_box_class") is None else str(opts["no_box_class"])
        if no_box is not None and layout != "class":
            raise ValueError(f"no_box_class: for single-label tasks; in a {LAYOUT_NAMES.get(layout, layout)} task an "
                             "image without boxes has none of the classes")
        if no_box is not None and no_box not in heads:
            raise ValueError(f"no_box_class {no_box!r} is not one of the task's classes ({', '.join(heads)})")
        reachable, why = cls.box_heads(opts, heads)
        missing = [head for head in heads if head not in reachable and head != no_box]
        if missing:
            raise ValueError(f"no box can be of class {', '.join(map(repr, missing))} ({why}), so no image would "
                             "have it; map a name to it, or leave it out of the task's classes")

    def name_map(self, default: dict[str, int] | None = None) -> dict[str, int | None]:
        """Class name in the files -> index into the task's heads, or None (left out): ``class_names``
        when given, else ``default`` (the task's classes by their names)."""
        names = self.opts["class_names"]
        if names is None:
            return {head: i for i, head in enumerate(self.task.heads)} if default is None else default
        return {str(name): None if head is None else self.task.heads.index(str(head)) for name, head in names.items()}

    def sort_objects(self, objects, names: dict[str, int | None], where, problems: list[str]):
        """(boxes, labels) of ``objects`` ((class name, box) pairs) whose name ``names`` maps to a class; a
        problem for each unknown name, with its count of objects in this file; those mapped to None are
        counted in ``left_out``."""
        boxes, labels, unknown = [], [], Counter()
        for name, box in objects:
            if name not in names:
                unknown[name] += 1
            elif names[name] is None:
                self.left_out[name] += 1
            else:
                boxes.append(box)
                labels.append(names[name])
        for name, count in unknown.items():
            problems.append(self.unknown_class(where, name, count, names))
        return boxes, labels

    def unknown_class(self, where, name: str, count: int, names: dict) -> str:
        known = ", ".join(repr(n) for n in names)
        return (f"{where}: class {name!r} ({count} object{'s' if count > 1 else ''}) is not one the task reads "
                f"({known}); name it as the task's classes do, or map it to one with class_names")

    def report_left_out(self) -> None:
        if self.left_out:
            log.info("objects left out (class_names maps their class to null): %s",
                     ", ".join(f"{name} {n}" for name, n in sorted(self.left_out.items())))


def size_mismatch(where, declared: tuple[int, int], size: tuple[int, int], image) -> str:
    """The problem of an annotation that gives its image another size than the image's header: its boxes were
    drawn on an image of another size (or turned another way) and would land in the wrong place."""
    turned = (" (turned a quarter: an EXIF orientation the labelling tool did not apply?)"
              if declared == size[::-1] else "")
    return (f"{where}: the annotation gives the image {image.name} the size {declared[0]}x{declared[1]} but it is "
            f"{size[0]}x{size[1]} (width x height, upright){turned}; its boxes were drawn on an image of another "
            "size: label it again, or give it the size it was labelled at")
