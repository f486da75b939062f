"""Training data: a decoded-image cache, albumentations augmentation and box-guided CutMix.

Each image is decoded once per process: frame cropped, kept at ``cache_scale * img_size`` for training
(room for scale/shift augmentation) and at exactly ``img_size`` for validation, the very array that
``run.py`` would feed the model, so out-of-fold probabilities match test-time ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from multiprocessing import get_context

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ..images import ImageReadError, border_box, boxes_after_crop, load_rgb, resize_square
from ..readers import Sample


@dataclass
class CachedImage:
    train: np.ndarray   # (S, S, 3) uint8, S = cache size
    eval: np.ndarray    # (img_size, img_size, 3) uint8, as at inference
    boxes: np.ndarray   # (n, 4) normalised x0, y0, x1, y1 in the cropped image


def _decode(job):
    sample, img_size, cache_size = job
    try:
        img = load_rgb(sample.path)
    except ImageReadError as e:
        return str(e)
    x0, y0, x1, y1 = box = border_box(img)
    crop = img[y0:y1, x0:x1]
    return CachedImage(resize_square(crop, cache_size), resize_square(crop, img_size),
                       boxes_after_crop(sample.boxes, box, img.shape[:2]))


def build_cache(samples: list[Sample], img_size: int, cache_scale: float, workers: int = 0) -> tuple[list, list[str]]:
    """Decode every image once: (cached images, None where a file could not be read; the errors)."""
    jobs = [(s, img_size, max(img_size, round(img_size * cache_scale))) for s in samples]
    if workers > 0 and len(jobs) > 8:
        with get_context("fork").Pool(workers) as pool:
            items = pool.map(_decode, jobs, chunksize=8)
    else:
        items = [_decode(j) for j in jobs]
    errors = [item for item in items if isinstance(item, str)]
    return [None if isinstance(item, str) else item for item in items], errors


def build_augmentation(img_size: int, strength: float, seed: int) -> A.Compose:
    """Flips, mild affine (small angles only: rotations change 'direction'), intensity, blur/noise."""
    s = strength
    transforms = [A.HorizontalFlip(p=0.5)]
    if s > 0:
        transforms += [
            A.Affine(scale=(1 - 0.15 * s, 1 + 0.15 * s), translate_percent=(-0.06 * s, 0.06 * s),
                     rotate=(-10 * s, 10 * s), border_mode=cv2.BORDER_CONSTANT, fill=0, p=0.7),
            A.RandomBrightnessContrast(brightness_limit=0.2 * s, contrast_limit=0.2 * s, p=0.6),
            A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.GaussNoise(std_range=(0.02 * s, 0.06 * s))],
                    p=min(1.0, 0.3 * s)),
        ]
    transforms.append(A.Resize(img_size, img_size, interpolation=cv2.INTER_AREA))
    return A.Compose(transforms, strict=True, seed=seed)


def _area(box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def _intersection(a, b) -> float:
    return _area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))


def box_cutmix(img: np.ndarray, boxes: np.ndarray, donor: CachedImage, rng: np.random.Generator,
               margin: float = 0.1):
    """Paste a lesion cut from ``donor`` (its label box plus a margin) at a random place in ``img``.

    Returns (image, donor_weight) or None when either image has no lesion box. The labels mix by lesion
    area: donor_weight = pasted lesion area / (pasted lesion area + the target lesion area left visible).
    """
    if len(boxes) == 0 or len(donor.boxes) == 0:
        return None
    size = img.shape[0]
    d = donor.boxes[rng.integers(len(donor.boxes))]
    w, h = d[2] - d[0], d[3] - d[1]
    src = np.clip([d[0] - margin * w, d[1] - margin * h, d[2] + margin * w, d[3] + margin * h], 0, 1)
    px = np.round(src * size).astype(int)
    patch = donor.train[px[1]:px[3], px[0]:px[2]]
    ph, pw = patch.shape[:2]
    if ph < 2 or pw < 2 or ph >= size or pw >= size:
        return None
    top, left = int(rng.integers(0, size - ph + 1)), int(rng.integers(0, size - pw + 1))
    out = img.copy()
    out[top:top + ph, left:left + pw] = patch
    pasted = (left / size, top / size, (left + pw) / size, (top + ph) / size)
    donor_area = w * h
    visible = sum(_area(b) - _intersection(b, pasted) for b in boxes)
    return out, float(donor_area / (donor_area + visible)) if donor_area + visible > 0 else 0.0


class TrainDataset(Dataset):
    def __init__(self, items: list[CachedImage], targets: np.ndarray, masks: np.ndarray, img_size: int,
                 aug_strength: float, cutmix_p: float, seed: int):
        self.items, self.targets, self.masks = items, targets, masks
        self.cutmix_p = cutmix_p
        self.transform = build_augmentation(img_size, aug_strength, seed)
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.transform.set_random_seed(seed)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        item = self.items[i]
        img, target, mask = item.train, self.targets[i], self.masks[i]
        if self.cutmix_p > 0 and self.rng.random() < self.cutmix_p:
            j = int(self.rng.integers(len(self.items)))
            mixed = box_cutmix(img, item.boxes, self.items[j], self.rng)
            if mixed is not None:
                img, lam = mixed
                target = (1 - lam) * target + lam * self.targets[j]
                mask = mask * self.masks[j]
        img = self.transform(image=img)["image"]
        return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1), torch.from_numpy(target), torch.from_numpy(mask)


class EvalDataset(Dataset):
    def __init__(self, items: list[CachedImage]):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return torch.from_numpy(self.items[i].eval).permute(2, 0, 1)
