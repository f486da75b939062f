"""Readers of training data, one small class per source, chosen by name in the task file's ``data:``.

======================  ==========================================================================
``yolo-folders``        one folder per class with images/ and YOLO label files (the BI-RADS cla layout)
``label-folders``       images/ plus one folder of 0/1 label files per label (the BI-RADS fea layout)
``class-folders``       ``<class>/<image>`` (ImageFolder)
``csv``                 one row per image: path, label(s) or a segmentation mask, optional group
                        (patient) and box columns; for a detection task one row per box
``mask-pairs``          segmentation: ``<stem>.tif`` beside its ``<stem>_mask.tif``, in any folders
                        below (the LGG MRI layout); the group from the path by ``group_pattern``;
                        detection: one box per connected component of each class
``image-mask-folders``  segmentation: images/ and masks/ with the same file stems (nnU-Net 2D,
                        BUS-BRA); the group from the file name by ``group_pattern``; detection as above
``voc``                 boxes: Pascal VOC XML in Annotations/ beside JPEGImages/ (labelImg, CVAT, BCCD)
``yolo``                boxes: images/ and labels/ with one YOLO .txt per image, in any folders below
                        (Ultralytics, the BI-RADS class folders), names from the task or a data.yaml
``coco``                boxes: a COCO instances JSON beside its images
======================  ==========================================================================

The training code never knows which reader fed it: each returns Samples (path, key, labels, boxes,
group, mask, objects; ``records``) and lists every problem it finds instead of stopping at the first. A
segmentation sample's labels say which classes its mask holds (one 0/1 per class);
``base.segmentation_sample`` checks the image and mask and makes it, for every reader. The readers of
boxes (voc, yolo, coco, csv box rows, boxes from masks) feed detection and classification tasks alike
through ``box_sample``: a detection sample's ``objects`` are its boxes, checked by
``model.boxes.check_boxes``, and ``ReadResult.dropped`` / ``clipped`` count what was done to bad ones.
"""
from __future__ import annotations

from pathlib import Path

from .base import Reader
from .class_folders import ClassFolders
from .coco import Coco
from .csv_table import CsvTable
from .image_mask_folders import ImageMaskFolders
from .label_folders import LabelFolders
from .mask_pairs import MaskPairs
from .records import DatasetError, ReadResult, Sample
from .voc import Voc
from .yolo import Yolo
from .yolo_folders import YoloFolders

READERS: dict[str, type[Reader]] = {r.name: r for r in (YoloFolders, LabelFolders, ClassFolders, CsvTable, MaskPairs,
                                                         ImageMaskFolders, Voc, Yolo, Coco)}

__all__ = ["READERS", "DatasetError", "ReadResult", "Reader", "Sample", "check_reader_options", "make_reader",
           "read_dataset"]


def check_reader_options(data: dict, kind, heads) -> None:
    name = data.get("reader")
    if "reader" not in data:
        from ..keys import did_you_mean
        hints = [did_you_mean(str(key), ["reader"]) for key in data]
        hint = next((f"; {h.removeprefix('; ')} (not {key!r})" for key, h in zip(data, hints) if h), "")
        raise ValueError(f"reader: required, one of {', '.join(READERS)}{hint}")
    if not isinstance(name, str) or name not in READERS:
        raise ValueError(f"reader {name!r}: choose one of {', '.join(READERS)}")
    READERS[name].check(data, kind, heads)


def make_reader(task) -> Reader:
    if not task.data.get("reader"):
        raise ValueError(f"{task.source}: the task has no data: reader:, so it cannot be trained")
    return READERS[task.data["reader"]](task)


def locate_dataset(task, data: str | Path | None = None) -> tuple[Path, Path]:
    """(dataset root, the folder the reader reads) for ``data`` (default: the task file's data.root)."""
    data = data or task.data.get("root")
    if not data:
        raise ValueError("no training data given: pass --data DIR, or set data: root: in the task file")
    return make_reader(task).locate(data)


def read_dataset(task, data: str | Path | None = None) -> tuple[Path, ReadResult]:
    """(dataset root, what the task's reader found) for ``data`` (default: the task file's data.root)."""
    root, layout = locate_dataset(task, data)
    return root, make_reader(task).read(layout, root)
