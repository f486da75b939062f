"""Generated data for tests: small ultrasound-like images, the training layouts, tiny bundles."""
from __future__ import annotations

from pathlib import Path

import model.kinds  # noqa: F401  (registers the task kinds, as the entry points do)
from model.export import export_bundle
from model.network import create_network
from model.synthetic import fake_ultrasound, save_image  # noqa: F401 (re-exported for tests)
from model.task import Task, load_task, task_from_dict

PROJECT = Path(__file__).resolve().parents[1]
TEST_BACKBONE = "test_efficientnet"
TEST_SIZE = 32
SHARED_DATA = PROJECT.parent / "shared" / "data" / "breast-lesions-usg"
BUSI = PROJECT.parent / "shared" / "data" / "busi"
CLA_TASK = load_task(PROJECT / "tasks" / "birads-cla.yaml")
FEA_TASK = load_task(PROJECT / "tasks" / "birads-fea.yaml")
TASKS = {"cla": CLA_TASK, "fea": FEA_TASK}
CLA_FOLDERS = CLA_TASK.data["class_folders"]
FEATURES = FEA_TASK.heads


def make_cla_data(root: Path, per_class: int = 4, size=(80, 96)) -> Path:
    """The BI-RADS cla layout under ``root``; returns root."""
    train = root / "乳腺分类训练数据集" / "train"
    n = 0
    for label, folder in enumerate(CLA_FOLDERS):
        for i in range(per_class):
            stem = f"img{n:03d}"
            ext = ".png" if i % 2 else ".jpg"
            save_image(train / folder / "images" / f"{stem}{ext}", fake_ultrasound(n, size, label))
            (train / folder / "labels").mkdir(parents=True, exist_ok=True)
            (train / folder / "labels" / f"{stem}.txt").write_text(f"{label + 1} 0.5 0.5 0.3 0.25\n")
            n += 1
    return root


def make_fea_data(root: Path, n: int = 16, size=(80, 96), unknown: dict | None = None) -> Path:
    """The BI-RADS fea layout; feature j of image i is positive when bit j of i is set.

    ``unknown`` maps a feature name to image indices whose label file is left empty.
    """
    train = root / "乳腺特征训练数据集" / "train"
    unknown = unknown or {}
    for i in range(n):
        stem = f"f{i:03d}"
        save_image(train / "images" / f"{stem}.png", fake_ultrasound(100 + i, size, i % 6))
        for j, feature in enumerate(FEATURES):
            folder = train / f"{feature}_labels"
            folder.mkdir(parents=True, exist_ok=True)
            text = "" if i in unknown.get(feature, ()) else f"{(i >> j) & 1} 0.5 0.5 0.3 0.25\n"
            (folder / f"{stem}.txt").write_text(text)
    return root


def make_class_folders(root: Path, classes=("benign", "malignant", "normal"), per_class: int = 6, size=(80, 96)) -> Path:
    """Images in ``<root>/<class>/<name with spaces (n).jpg>``, the ImageFolder layout BUSI uses."""
    n = 0
    for label, name in enumerate(classes):
        for i in range(per_class):
            save_image(root / name / f"{name} ({i + 1}).jpg", fake_ultrasound(200 + n, size, 2 * label))
            n += 1
    return root


def write_task(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def make_bundle(folder: Path, task: Task | str, folds: int = 2, seed: int = 0, rule: dict | None = None,
                prior: list[float] | None = None, cv: dict | None = None) -> Path:
    """A random-init bundle of ``folds`` tiny networks, exported with the real export code."""
    import torch

    task = TASKS[task] if isinstance(task, str) else task
    checkpoints = []
    for fold in range(folds):
        torch.manual_seed(seed + fold)
        net = create_network(TEST_BACKBONE, len(task.heads))
        checkpoints.append({"task": task.name, "backbone": TEST_BACKBONE, "heads": list(task.heads),
                            "img_size": TEST_SIZE, "mean": [0.5] * 3, "std": [0.5] * 3, "fold": fold,
                            "epoch": 1, "score": 0.0, "state_dict": net.state_dict()})
    n = len(task.heads)
    default_prior = [1 / n] * n if task.kind.name == "single-label" else [0.3] * n
    manifest = {"task": task.to_dict(), "decision": rule or task.neutral_rule(), "prior": prior or default_prior,
                "cv": cv or {}, "trained_on": {"dataset": "generated", "images": 0, "license": "random init (tests)"}}
    return export_bundle(folder, checkpoints, manifest, replace=True)


def make_weights(root: Path) -> Path:
    """A weights folder with a cla and a fea bundle."""
    for name in ("cla", "fea"):
        make_bundle(root / name, name)
    return root


def make_test_folder(root: Path, n: int = 5) -> Path:
    """testB layout: cla/ and fea/ with numbered images of mixed formats and modes."""
    for task in ("cla", "fea"):
        for i in range(1, n + 1):
            ext = (".png", ".jpg", ".JPG", ".bmp", ".jpeg")[i % 5]
            mode = ("RGB", "L", "RGBA", "RGB", "L")[i % 5] if ext.lower() not in (".jpg", ".jpeg") or i % 5 != 2 else "RGB"
            if ext.lower() in (".jpg", ".jpeg") and mode == "RGBA":
                mode = "RGB"
            save_image(root / task / f"{i:04d}{ext}", fake_ultrasound(i, (70 + 5 * i, 90), i % 6), mode)
    return root


def generic_task(name: str = "lesion", kind: str = "single-label", heads=("benign", "malignant"), **extra) -> Task:
    """A task defined in code, as a task file would define it."""
    raw = {"name": name, "kind": kind, ("classes" if kind == "single-label" else "labels"): list(heads), **extra}
    return task_from_dict(raw, f"<test task {name}>")


SEG_SIZE = 64  # a segmentation network halves its input five times


def seg_task(name: str = "blobs", values: str = "masks", **extra) -> Task:
    """A one-class segmentation task (mask value 255), as a task file would define it."""
    raw = {"name": name, "kind": "segmentation", "classes": {"blob": 255}, "output": {"values": values}, **extra}
    return task_from_dict(raw, f"<test task {name}>")


def make_seg_bundle(folder: Path, task: Task, folds: int = 2, seed: int = 0, rule: dict | None = None,
                    input_norm: str = "backbone") -> Path:
    """A random-init bundle of ``folds`` tiny U-Nets, exported with the real export code."""
    import torch

    checkpoints = []
    outputs = 1 if len(task.heads) == 1 else len(task.heads) + 1
    for fold in range(folds):
        torch.manual_seed(seed + fold)
        net = create_network(TEST_BACKBONE, outputs, architecture="Unet")
        checkpoints.append({"task": task.name, "architecture": "Unet", "outputs": outputs, "backbone": TEST_BACKBONE,
                            "heads": list(task.heads), "img_size": SEG_SIZE, "mean": [0.5] * 3, "std": [0.5] * 3,
                            "input_norm": input_norm, "fold": fold, "epoch": 1, "score": 0.0, "state_dict": net.state_dict()})
    manifest = {"task": task.to_dict(), "decision": rule or task.neutral_rule(), "prior": [0.5] * len(task.heads),
                "cv": {}, "trained_on": {"dataset": "generated", "images": 0, "license": "random init (tests)"}}
    return export_bundle(folder, checkpoints, manifest, replace=True)


def det_task(name: str = "cells", values: str = "boxes", **extra) -> Task:
    """A two-class detection task, as a task file would define it."""
    raw = {"name": name, "kind": "detection", "classes": ["bright", "dim"], "output": {"values": values},
           "data": {"reader": "voc"}, **extra}
    return task_from_dict(raw, f"<test task {name}>")


def make_det_bundle(folder: Path, task: Task, folds: int = 2, seed: int = 0) -> Path:
    """A random-init bundle of ``folds`` tiny FCOS detectors, exported with the real export code."""
    import torch

    checkpoints = []
    for fold in range(folds):
        torch.manual_seed(seed + fold)
        net = create_network(TEST_BACKBONE, len(task.heads), architecture="fcos")
        checkpoints.append({"task": task.name, "architecture": "fcos", "outputs": len(task.heads),
                            "backbone": TEST_BACKBONE, "heads": list(task.heads), "img_size": SEG_SIZE,
                            "mean": [0.5] * 3, "std": [0.5] * 3, "fold": fold, "epoch": 1, "score": 0.0,
                            "state_dict": net.state_dict()})
    manifest = {"task": task.to_dict(), "decision": task.neutral_rule(), "prior": [0.5] * len(task.heads),
                "cv": {}, "trained_on": {"dataset": "generated", "images": 0, "license": "random init (tests)"}}
    return export_bundle(folder, checkpoints, manifest, replace=True)


def make_seg_images(folder: Path, n: int = 6, size=(64, 64), masks: Path | None = None, start: int = 0) -> list[Path]:
    """``n`` numbered scans with a bright disc (every third one without); their 0/255 masks in ``masks``
    (named like the scans) when given."""
    from model.synthetic import fake_scan
    paths = []
    for i in range(1, n + 1):
        image, mask = fake_scan(start + i, size, lesion=i % 3 != 0)
        paths.append(save_image(folder / f"{i:04d}.png", image))
        if masks is not None:
            save_image(masks / f"{i:04d}.png", mask)
    return paths
