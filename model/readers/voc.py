"""``voc``: Pascal VOC XML, one annotation file per image, in a folder beside the images (the layout labelImg,
CVAT and Roboflow export, and BCCD's).

::

    <subfolder>/Annotations/<stem>.xml     <object><name>RBC</name><bndbox><xmin>78</xmin>...</bndbox></object>...
    <subfolder>/JPEGImages/<stem>.jpg

Options (and those of every box reader, ``box_readers``):

* ``annotations`` and ``images`` (defaults ``Annotations`` and ``JPEGImages``): the two folders; they may be
  one folder (labelImg saves each XML beside its image).
* ``coordinates``: how ``<bndbox>`` is meant. ``corners`` (default): xmin, ymin, xmax, ymax are the box's
  corners in pixels from the image's top-left edge, and the box is [xmin, xmax) x [ymin, ymax) as read: what
  labelling tools write (labelImg writes the corners it was dragged to, only raising a 0 to 1; CVAT and
  Roboflow write the corners), and how albumentations' ``pascal_voc`` format, mmdetection and torchvision's
  detection tutorials read them. ``one-based``: the numbers are the original VOC devkit's 1-based, inclusive
  pixel indices, so the box is [xmin - 1, xmax) (detectron2's reading of the VOC 2007/2012 sets). The two
  differ by one pixel at the top and left; with ``corners`` a box whose xmax is not above its xmin has no
  width and is dropped (BCCD's two degenerate boxes).
* ``missing_xml``: an image without an annotation file is ``error`` (default: a problem, since a tool that
  saves nothing for an image it was never shown cannot be told from one shown an empty image, and training
  on a skipped image as a negative teaches the detector to miss) or ``empty`` (an image without objects,
  for sets whose negatives have no XML).

The image is found from the XML file's own stem, never from ``<filename>``, ``<path>`` or ``<folder>``,
which name the labeller's machine. An object's class is its ``<name>``; ``<difficult>`` and ``<truncated>``
objects are objects like any other (as detectron2 trains on them). The image's size is read from its header
(upright, as it is decoded); a ``<size>`` that says otherwise is a problem, since the boxes were drawn on an
image of another size (or turned another way) and would land in the wrong place; a missing or zero
``<size>`` is not checked. An XML file is parsed by ``xml.etree.ElementTree`` with a DOCTYPE refused (so no
entity is declared, let alone expanded) and its size bounded. Reported, all at once: an image without its
XML (unless ``missing_xml: empty``), an XML without its image, an unreadable or invalid XML file, an object
without a name or a box, an unknown class name, what ``check_boxes`` refuses, a ``<size>`` mismatch.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from ..images import is_regular_file
from .base import image_size, is_broken_link, list_images, log
from .box_readers import BOX_OPTIONS, BoxReader, size_mismatch
from .box_sample import box_sample
from .records import ReadResult

MAX_XML_BYTES = 8 * 1024 * 1024    # an annotation of thousands of objects is a few hundred kB
COORDINATES = ("corners", "one-based")
MISSING_XML = ("error", "empty")
CORNERS = ("xmin", "ymin", "xmax", "ymax")


class Voc(BoxReader):
    name = "voc"
    options = {"subfolder": "", "annotations": "Annotations", "images": "JPEGImages", "coordinates": "corners",
               "missing_xml": "error", **BOX_OPTIONS}
    summary = "Annotations/ (VOC XML files) beside JPEGImages/"
    group_text_is = "each image's file name"

    @classmethod
    def check_options(cls, opts: dict, heads) -> None:
        for key, values in (("coordinates", COORDINATES), ("missing_xml", MISSING_XML)):
            if opts[key] not in values:
                raise ValueError(f"{key} {opts[key]!r}: one of {', '.join(values)}")
        if not opts["annotations"] or not opts["images"]:
            raise ValueError("annotations and images: the two folders' names (they may be the same folder)")
        super().check_options(opts, heads)

    def describe(self) -> str:
        return super().describe().replace("Annotations/", f"{self.opts['annotations']}/").replace(
            "JPEGImages/", f"{self.opts['images']}/")

    def looks_like(self, folder: Path) -> bool:
        return (folder / self.opts["annotations"]).is_dir() and (folder / self.opts["images"]).is_dir()

    def read(self, layout: Path, root: Path) -> ReadResult:
        result = ReadResult([])
        annotations, images_dir = layout / self.opts["annotations"], layout / self.opts["images"]
        beside = annotations.resolve() == images_dir.resolve()
        xmls = self._annotation_files(annotations, beside, result.problems)
        images = list_images(images_dir, result.problems, "so each annotation names one image",
                             ignore=(".xml",) if beside else ())
        if not images:
            result.problems.append(f"{images_dir}: no images")
        groups = self.groups_of({image: image.name for image in images.values()}, images_dir, result.problems)
        if groups is None:
            return result
        names = self.name_map()
        for stem, image in images.items():
            before = len(result.problems)
            size = image_size(image, result.problems, "remove it and its annotation")
            xml = xmls.get(stem)
            objects, declared = [], None
            if xml is not None:
                declared, objects = _parse(xml, result.problems)
            elif self.opts["missing_xml"] == "error":
                result.problems.append(f"{image}: no annotation {annotations / stem}.xml; add it, or set "
                                       "missing_xml: empty if an image without one has no objects")
            if size is not None and declared is not None and declared != size:
                result.problems.append(size_mismatch(xml, declared, size, image))
            boxes, labels = self.sort_objects(objects, names, xml, result.problems)
            if self.opts["coordinates"] == "one-based":
                boxes = [(x1 - 1, y1 - 1, x2, y2) for x1, y1, x2, y2 in boxes]
            if size is not None:
                box_sample(self.task, image, root, size, boxes, labels, xml or image, groups[image], result,
                           self.no_box, keep=len(result.problems) == before)
        for stem in sorted(set(xmls) - set(images)):
            result.problems.append(f"{xmls[stem]}: annotation without its image ({images_dir / stem}.<ext>); add "
                                   "the image or remove the annotation")
        self.report_left_out()
        return result

    def _annotation_files(self, folder: Path, beside: bool, problems: list[str]) -> dict[str, Path]:
        """The XML files in ``folder`` by stem; other files are skipped with a warning (silently when the
        images lie there too)."""
        if not folder.is_dir():
            problems.append(f"{folder}: no annotations folder")
            return {}
        xmls: dict[str, Path] = {}
        for path in sorted(folder.iterdir()):
            if path.name.startswith(".") or is_broken_link(path):
                continue
            if path.suffix.lower() != ".xml" or not is_regular_file(path):
                if not beside:
                    log.warning("%s: not a VOC annotation (.xml), ignored", path)
            elif path.stem in xmls:
                problems.append(f"{path}: same name as {xmls[path.stem].name}; keep one annotation per image")
            else:
                xmls[path.stem] = path
        return xmls


class _Refused(Exception):
    pass


class _NoDoctype(ET.TreeBuilder):
    """A tree builder that stops at a DOCTYPE: a VOC file has none, and one can declare entities whose
    expansion (a "billion laughs") or external reference the parser would follow."""

    def doctype(self, name, pubid, system):
        raise _Refused


def _parse(xml: Path, problems: list[str]) -> tuple[tuple[int, int] | None, list]:
    """(the declared <size> as (width, height), None when missing or zero; the (name, box) of every object
    that has both) of a VOC file; what is wrong with it goes to ``problems``."""
    try:
        if xml.stat().st_size > MAX_XML_BYTES:
            problems.append(f"{xml}: {xml.stat().st_size} bytes; an annotation file holds at most {MAX_XML_BYTES}")
            return None, []
        parser = ET.XMLParser(target=_NoDoctype())
        parser.feed(xml.read_bytes())
        tree = parser.close()
    except _Refused:
        problems.append(f"{xml}: has a DOCTYPE declaration, refused (a VOC annotation has none); remove it")
        return None, []
    except ET.ParseError as e:
        problems.append(f"{xml}: not valid XML ({e}); export the annotation again")
        return None, []
    except OSError as e:
        problems.append(f"{xml}: cannot read this file ({e.strerror or e})")
        return None, []
    if tree.tag != "annotation":
        problems.append(f"{xml}: not a VOC annotation (its root element is <{tree.tag}>, not <annotation>)")
        return None, []
    objects = []
    for number, element in enumerate(tree.findall("object"), 1):
        name = (element.findtext("name") or "").strip()
        box = element.find("bndbox")
        said = f"{xml}: object {number}" + (f" ({name})" if name else "")
        if not name:
            problems.append(f"{said} has no <name>")
        if box is None:
            problems.append(f"{said} has no <bndbox>")
            continue
        texts = [(box.findtext(corner) or "").strip() for corner in CORNERS]
        try:
            corners = tuple(float(t) for t in texts)
        except ValueError:
            problems.append(f"{said}: <bndbox> {dict(zip(CORNERS, texts))} is not four numbers")
            continue
        if name:
            objects.append((name, corners))
    return _declared_size(tree), objects


def _declared_size(tree) -> tuple[int, int] | None:
    try:
        size = round(float(tree.findtext("size/width", ""))), round(float(tree.findtext("size/height", "")))
    except (ValueError, OverflowError):
        return None
    return size if min(size) > 0 else None
