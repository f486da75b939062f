"""``class-folders``: the ImageFolder layout, ``<subfolder>/<class folder>/<image>``; the folder is the label.

Options: ``class_folders`` (one per class, in the order of ``classes``; default the class names). Any other
visible folder is reported (a misspelt class would otherwise be left out); other files, and folders inside a
class folder, are skipped with a warning. Names may hold spaces, parentheses and any other character.
"""
from __future__ import annotations

from pathlib import Path

from ..images import is_image_file, is_regular_file
from .base import ReadResult, Reader, Sample, log, relative_key, unexpected_folders


class ClassFolders(Reader):
    name = "class-folders"
    layouts = ("class",)
    options = {"subfolder": "", "class_folders": None}
    summary = "one folder of images per class"

    @classmethod
    def check_options(cls, opts: dict, heads) -> None:
        value = opts.get("class_folders")
        if value is not None and (not isinstance(value, list) or len(value) != len(heads)):
            raise ValueError(f"class_folders: expected a list with one folder name per class ({len(heads)})")

    @property
    def folders(self) -> list[str]:
        return [str(f) for f in (self.opts["class_folders"] or self.task.heads)]

    def looks_like(self, folder: Path) -> bool:
        return folder.is_dir() and any((folder / name).is_dir() for name in self.folders)

    def class_folders(self, layout: Path, result: ReadResult):
        """(class id, folder) of each class folder there is; a folder that is not a class's is a problem,
        and a missing one goes to ``missing``."""
        unexpected_folders(layout, self.folders, "class folders", result.problems)
        for label, name in enumerate(self.folders):
            folder = layout / name
            if folder.is_dir():
                yield label, folder
            else:
                self.missing(folder, label, result)

    def missing(self, folder: Path, label: int, result: ReadResult) -> None:
        result.problems.append(f"{folder}: class folder missing; class {self.task.heads[label]} needs images")

    def read(self, layout: Path, root: Path) -> ReadResult:
        result = ReadResult([])
        for label, folder in self.class_folders(layout, result):
            found = 0
            for path in sorted(folder.iterdir()):
                if path.name.startswith("."):
                    continue
                if path.is_dir():
                    log.warning("%s: folder inside a class folder, ignored", path)
                elif not is_image_file(path) or not is_regular_file(path):
                    log.warning("%s: not an image file (jpg/jpeg/png/bmp/tif), ignored", path)
                else:
                    result.samples.append(Sample(path, relative_key(path, root), (label,)))
                    found += 1
            if not found:
                result.problems.append(f"{folder}: class folder has no images")
        return result
