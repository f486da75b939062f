"""``mask-pairs``: each image beside its mask, anywhere below the layout folder (the LGG MRI layout).

::

    <subfolder>/<case>/<case>_1.tif          the image
    <subfolder>/<case>/<case>_1_mask.tif     its mask: 0 background, each class its value (classes:)

Options:

* ``mask_suffix`` (default ``_mask``): the mask of ``<dir>/<stem>.<ext>`` is ``<dir>/<stem><mask_suffix>``
  with any image extension, the image's own preferred. Every image file whose stem ends with it is a mask.
* ``group_pattern``: a regular expression searched in each image's path relative to the layout folder
  (``<case>/<case>_1.tif``); its first capture group (or the whole match) is the image's group (patient),
  whose images never go to different folds. Without it every image is its own group.
* ``mask_values`` (a detection task only): each class's value in the masks, in the order of ``classes``
  (default 255, for a task of one class). A detection task reads one box per 8-connected component of each
  class (``model.boxes.boxes_from_mask``): the LGG masks become a one-class detection set.

Hidden files and folders are skipped, other files with a warning. Reported, all at once: an image without
its mask, a mask without its image, two images with one name, a second mask of one image, and what
``segmentation_sample`` finds (an unreadable image or mask, an unknown mask value, a size mismatch).
"""
from __future__ import annotations

from pathlib import Path

from ..images import is_image_file, is_regular_file
from .base import ReadResult, SegmentationReader, log, segmentation_sample, visible_files


class MaskPairs(SegmentationReader):
    name = "mask-pairs"
    options = {"subfolder": "", "mask_suffix": "_mask", "group_pattern": None, "mask_values": None}
    summary = "images with their masks beside them (<stem>.tif and <stem>_mask.tif)"
    group_text_is = "each image's path relative to the layout folder, the subfolder: option not included"

    @classmethod
    def check_options(cls, opts: dict, heads) -> None:
        if not opts["mask_suffix"]:
            raise ValueError("mask_suffix: must not be empty (the masks' names end with it, e.g. '_mask')")
        super().check_options(opts, heads)

    def describe(self) -> str:
        return super().describe().replace("_mask", self.opts["mask_suffix"])

    def is_mask(self, path: Path) -> bool:
        return path.stem.endswith(self.opts["mask_suffix"])

    def looks_like(self, folder: Path) -> bool:
        return folder.is_dir() and any(is_image_file(p) and self.is_mask(p) for p in visible_files(folder))

    def read(self, layout: Path, root: Path) -> ReadResult:
        result = ReadResult([])
        suffix = self.opts["mask_suffix"]
        images: dict[tuple[Path, str], list[Path]] = {}   # (folder, stem) -> images
        masks: dict[tuple[Path, str], list[Path]] = {}    # (folder, the image's stem) -> masks
        for path in visible_files(layout):
            if not is_image_file(path) or not is_regular_file(path):
                log.warning("%s: not an image file (jpg/jpeg/png/bmp/tif), ignored", path)
            elif self.is_mask(path):
                masks.setdefault((path.parent, path.stem[:-len(suffix)]), []).append(path)
            else:
                images.setdefault((path.parent, path.stem), []).append(path)
        if not images:
            result.problems.append(f"{layout}: no images (only masks, named *{suffix}.*)" if masks else
                                   f"{layout}: no images")
        groups = self.groups_of({paths[0]: paths[0].relative_to(layout).as_posix()
                                         for paths in images.values()}, layout, result.problems)
        if groups is None:
            return result
        for (folder, stem), paths in sorted(images.items()):
            before = len(result.problems)
            image, *others = paths
            for other in others:
                result.problems.append(f"{other}: same name as {image.name}; rename one so each mask matches one image")
            mask = self._mask_of(image, masks.get((folder, stem), []), result.problems)
            segmentation_sample(self.task, image, mask, root, groups[image], result,
                                keep=len(result.problems) == before, values=self.mask_values)
        for (folder, stem), paths in sorted(masks.items()):
            if (folder, stem) not in images:
                for path in paths:
                    result.problems.append(f"{path}: mask without its image (expected {folder / stem}.<ext>); "
                                           "add the image or remove the mask")
        return result

    def _mask_of(self, image: Path, candidates: list[Path], problems: list[str]) -> Path | None:
        """The one mask of ``image`` among ``candidates`` (the same extension preferred); None (a problem)
        when there is none or several."""
        expected = image.with_name(image.stem + self.opts["mask_suffix"] + image.suffix)
        if not candidates:
            problems.append(f"{image}: mask missing: expected {expected}; add it, or remove the image")
            return None
        same = [p for p in candidates if p.suffix.lower() == image.suffix.lower()]
        if len(candidates) == 1 or len(same) == 1:
            mask = candidates[0] if len(candidates) == 1 else same[0]
            for other in candidates:
                if other != mask:
                    log.warning("%s: another mask of %s, ignored (%s is used)", other, image, mask.name)
            return mask
        problems.append(f"{image}: several masks ({', '.join(p.name for p in candidates)}); keep one")
        return None
