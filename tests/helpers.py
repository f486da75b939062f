"""Generated data for tests: small ultrasound-like images, both training layouts, tiny bundles."""
from __future__ import annotations

from pathlib import Path

from model.bundle import export_bundle
from model.network import create_network
from model.synthetic import fake_ultrasound, save_image  # noqa: F401 (re-exported for tests)
from model.tasks import CLA_FOLDERS, FEATURES, TASKS

TEST_BACKBONE = "test_efficientnet"
TEST_SIZE = 32
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "breast-lesions-usg"


def make_cla_data(root: Path, per_class: int = 4, size=(80, 96)) -> Path:
    """The official cla layout under ``root``; returns root."""
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
    """The official fea layout; feature j of image i is positive when bit j of i is set.

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


def make_bundle(folder: Path, task_name: str, folds: int = 2, seed: int = 0, rule: dict | None = None) -> Path:
    """A random-init bundle of ``folds`` tiny networks, exported with the real export code."""
    import torch

    task = TASKS[task_name]
    checkpoints = []
    for fold in range(folds):
        torch.manual_seed(seed + fold)
        net = create_network(TEST_BACKBONE, task.num_outputs)
        checkpoints.append({"task": task.name, "backbone": TEST_BACKBONE, "heads": list(task.heads),
                            "img_size": TEST_SIZE, "mean": [0.5] * 3, "std": [0.5] * 3, "fold": fold,
                            "epoch": 0, "score": 0.0, "state_dict": net.state_dict()})
    prior = [1 / task.num_outputs] * task.num_outputs if not task.multilabel else [0.3] * task.num_outputs
    return export_bundle(folder, checkpoints, {"decision": rule or task.default_rule(), "prior": prior,
                                               "cv": {}, "trained_on": "random init (tests)"})


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
