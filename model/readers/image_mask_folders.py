"""``image-mask-folders``: a folder of images and a folder of masks with the same names (the nnU-Net 2D and
BUS-BRA style).

::

    <subfolder>/images/case_001.jpg
    <subfolder>/masks/case_001.png       0 background, each class its value (classes:)

Options:

* ``images`` and ``masks`` (defaults ``images`` and ``masks``): the two folders' names. An image and its
  mask share the file stem; their extensions may differ.
* ``group_pattern``: a regular expression searched in each image's file name; its first capture group (or
  the whole match) is the image's group (patient). Without it every image is its own group.
* ``mask_values`` (a detection task only): each class's value in the masks, in the order of ``classes``
  (default 255, for a task of one class); one box per 8-connected component of each class.

Reported, all at once: an image without its mask, a mask without its image, two files with one stem in a
folder, and what ``segmentation_sample`` finds (an unreadable image or mask, an unknown mask value, a size
mismatch). Other files are skipped with a warning.
"""
from __future__ import annotations

from pathlib import Path

from .base import ReadResult, SegmentationReader, list_images, segmentation_sample


class ImageMaskFolders(SegmentationReader):
    name = "image-mask-folders"
    options = {"subfolder": "", "images": "images", "masks": "masks", "group_pattern": None, "mask_values": None}
    summary = "images/ and masks/ folders whose files have the same names"

    @classmethod
    def check_options(cls, opts: dict, heads) -> None:
        if not opts["images"] or not opts["masks"] or opts["images"] == opts["masks"]:
            raise ValueError(f"images {opts['images']!r} and masks {opts['masks']!r}: expected two different "
                             "folder names")
        super().check_options(opts, heads)

    def describe(self) -> str:
        return super().describe().replace("images/ and masks/", f"{self.opts['images']}/ and {self.opts['masks']}/")

    def looks_like(self, folder: Path) -> bool:
        return (folder / self.opts["images"]).is_dir() and (folder / self.opts["masks"]).is_dir()

    def read(self, layout: Path, root: Path) -> ReadResult:
        result = ReadResult([])
        images_dir, masks_dir = layout / self.opts["images"], layout / self.opts["masks"]
        images = list_images(images_dir, result.problems, "so each image has one mask")
        masks = list_images(masks_dir, result.problems, "so each image has one mask")
        if not images:
            result.problems.append(f"{images_dir}: no images")
        groups = self.groups_of({image: image.name for image in images.values()}, images_dir, result.problems)
        if groups is None:
            return result
        for stem, image in images.items():
            before = len(result.problems)
            mask = masks.get(stem)
            if mask is None:
                result.problems.append(f"{image}: mask missing: expected {masks_dir / stem}.<ext>; add it, "
                                       "or remove the image")
            segmentation_sample(self.task, image, mask, root, groups[image], result,
                                keep=len(result.problems) == before, values=self.mask_values)
        for stem in sorted(set(masks) - set(images)):
            result.problems.append(f"{masks[stem]}: mask without its image in {images_dir}; add the image or "
                                   "remove the mask")
        return result
