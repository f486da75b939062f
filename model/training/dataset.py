"""Training data: the decoded-image cache, the epoch sampler, and the CPU augmentation pipeline.

Each image is decoded once: frame cropped (when the task's kind crops it), kept at ``cache_scale *
img_size`` for training (room for scale and shift augmentation) and at exactly ``img_size`` for
validation, the very array that ``run.py`` would feed the model, so out-of-fold probabilities match
test-time ones. A segmentation sample's mask is cached beside its image at both sizes (nearest
neighbour), and albumentations moves image and mask together. The cache is two contiguous
uint8 arrays: loader workers share them (fork, copy-on-write), and the device augmentation path uploads
them to the GPU in one piece (model.training.augment).

Randomness travels with the indices: the sampler hands out (seed, index) pairs drawn from (run seed,
fold, epoch), and each image's augmentation is seeded from its pair. So results do not depend on the
number of loader workers, workers persist from epoch to epoch, and a resumed run repeats an
uninterrupted one.
"""
from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from multiprocessing import get_context

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..images import ImageReadError, boxes_after_crop, input_box, load_rgb, resize_square
from ..masks import MaskError, load_mask, resize_mask
from ..readers import Sample


@dataclass
class CachedImage:
    train: np.ndarray   # (S, S, 3) uint8, S = cache size
    eval: np.ndarray    # (img_size, img_size, 3) uint8, as at inference
    boxes: np.ndarray   # (n, 4) normalised x0, y0, x1, y1 in the cropped image
    mask_train: np.ndarray | None = None   # (S, S) uint8 class ids (segmentation)
    mask_eval: np.ndarray | None = None    # (img_size, img_size)


class ImageCache(Sequence):
    """Every decoded image in two contiguous uint8 arrays (and, for segmentation, its mask in two more);
    ``cache[i]`` is a CachedImage of views."""

    def __init__(self, train: np.ndarray, eval: np.ndarray, boxes: list[np.ndarray],
                 masks_train: np.ndarray | None = None, masks_eval: np.ndarray | None = None):
        self.train, self.eval, self.boxes = train, eval, boxes
        self.masks_train, self.masks_eval = masks_train, masks_eval

    def __len__(self) -> int:
        return len(self.train)

    def __getitem__(self, i) -> CachedImage:
        masks = (None, None) if self.masks_train is None else (self.masks_train[i], self.masks_eval[i])
        return CachedImage(self.train[i], self.eval[i], self.boxes[i], *masks)

    def subset(self, indices) -> "ImageCache":
        indices = np.asarray(indices)
        masks = (None, None) if self.masks_train is None else (self.masks_train[indices], self.masks_eval[indices])
        return ImageCache(self.train[indices], self.eval[indices], [self.boxes[i] for i in indices], *masks)


def _decode(job):
    sample, img_size, cache_size, crop_border, mask_values = job
    try:
        img = load_rgb(sample.path)
        mask = load_mask(sample.mask, mask_values) if sample.mask is not None else None
    except (ImageReadError, MaskError) as e:
        return str(e)
    x0, y0, x1, y1 = box = input_box(img, crop_border)
    crop = img[y0:y1, x0:x1]
    masks = () if mask is None else (resize_mask(mask[y0:y1, x0:x1], (cache_size, cache_size)),
                                     resize_mask(mask[y0:y1, x0:x1], (img_size, img_size)))
    return CachedImage(resize_square(crop, cache_size), resize_square(crop, img_size),
                       boxes_after_crop(sample.boxes, box, img.shape[:2]), *masks)


def cache_size(img_size: int, cache_scale: float) -> int:
    return max(img_size, round(img_size * cache_scale))


def build_cache(samples: list[Sample], img_size: int, cache_scale: float, workers: int = 0, crop_border: bool = True,
                mask_values: tuple[int, ...] = ()) -> tuple[ImageCache, list[str]]:
    """Decode every image (and mask) once: (the cache, with black images where a file could not be read;
    the errors). ``crop_border``: crop the dark frame (the task kind says whether)."""
    size = cache_size(img_size, cache_scale)
    jobs = [(s, img_size, size, crop_border, mask_values) for s in samples]
    with_masks = any(s.mask is not None for s in samples)
    if workers > 0 and len(jobs) > 8:
        with get_context("fork").Pool(workers) as pool:
            decoded = pool.imap(_decode, jobs, chunksize=8)
            return _gather(decoded, len(jobs), img_size, size, with_masks)
    return _gather(map(_decode, jobs), len(jobs), img_size, size, with_masks)


def _gather(decoded, n: int, img_size: int, size: int, with_masks: bool) -> tuple[ImageCache, list[str]]:
    train, evals = np.zeros((n, size, size, 3), np.uint8), np.zeros((n, img_size, img_size, 3), np.uint8)
    masks = (np.zeros((n, size, size), np.uint8), np.zeros((n, img_size, img_size), np.uint8)) if with_masks else ()
    boxes, errors = [np.zeros((0, 4), np.float32)] * n, []
    for i, item in enumerate(decoded):
        if isinstance(item, str):
            errors.append(item)
            continue
        train[i], evals[i], boxes[i] = item.train, item.eval, item.boxes
        if with_masks:
            masks[0][i], masks[1][i] = item.mask_train, item.mask_eval
    return ImageCache(train, evals, boxes, *masks), errors


def epoch_seed(seed: int, fold: int, epoch: int) -> int:
    """The seed of one fold's epoch (epochs from 1): the same as before resuming."""
    return seed * 1000 + fold * 100 + epoch - 1


class EpochSampler(Sampler):
    """(per-image seed, index) pairs for one epoch at a time: a seeded shuffle, or ``weights``-proportional
    draws with replacement; ``set_epoch`` moves on. ``length`` images per epoch (whole batches)."""

    def __init__(self, n: int, length: int, seed: int, fold: int, weights: np.ndarray | None = None):
        self.n, self.length, self.seed, self.fold, self.weights = n, length, seed, fold, weights
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> np.ndarray:
        rng = np.random.default_rng(epoch_seed(self.seed, self.fold, self.epoch))
        if self.weights is None:
            return rng.permutation(self.n)[: self.length]
        return rng.choice(self.n, size=self.length, replace=True, p=self.weights / self.weights.sum())

    def __iter__(self) -> Iterator[tuple[int, int]]:
        base = epoch_seed(self.seed, self.fold, self.epoch) * 100_003
        for position, index in enumerate(self.order()):
            yield base + position, int(index)

    def __len__(self) -> int:
        return self.length


GRAY_WEIGHTS = (0.299, 0.587, 0.114)   # ITU-R 601 luma: OpenCV's and albumentations' weighted_average


def build_augmentation(img_size: int, strength: float, gray_p: float = 0.0, boxes: bool = False) -> A.Compose:
    """Flips, mild affine (small angles only: rotations change 'direction'), gray, intensity, blur/noise.

    ``boxes``: the targets are boxes (relative x1, y1, x2, y2 with a ``classes`` field), moved with the
    image by albumentations; there is then no rotation (a turned box no longer fits its object), a box
    less than a third of which stays in view is dropped and the others are clipped to the image."""
    s = strength
    transforms = [A.HorizontalFlip(p=0.5)]
    if gray_p > 0:
        transforms.append(A.ToGray(num_output_channels=3, method="weighted_average", p=gray_p))
    if s > 0:
        transforms += [
            A.Affine(scale=(1 - 0.15 * s, 1 + 0.15 * s), translate_percent=(-0.06 * s, 0.06 * s),
                     rotate=0 if boxes else (-10 * s, 10 * s), border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0,
                     p=0.7),
            A.RandomBrightnessContrast(brightness_limit=0.2 * s, contrast_limit=0.2 * s, p=0.6),
            A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.GaussNoise(std_range=(0.02 * s, 0.06 * s))],
                    p=min(1.0, 0.3 * s)),
        ]
    transforms.append(A.Resize(img_size, img_size, interpolation=cv2.INTER_AREA))
    bbox_params = A.BboxParams(format="albumentations", label_fields=["classes"], min_visibility=0.3, clip=True,
                               filter_invalid_bboxes=True) if boxes else None
    return A.Compose(transforms, bbox_params=bbox_params, strict=True)


def _area(box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def _intersection(a, b) -> float:
    return _area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))


def plan_cutmix(boxes: np.ndarray, donor_boxes: np.ndarray, size: int, rng: np.random.Generator,
                margin: float = 0.1):
    """Where to cut a donor's lesion (its label box plus a margin) and where to paste it in a ``size``
    image: ((y0, y1, x0, x1) in the donor, (top, left) in the image, donor weight), or None when either
    image has no lesion box. Labels mix by lesion area: donor weight = pasted lesion area / (pasted lesion
    area + the target lesion area left visible). Both augmentation paths use this plan."""
    if len(boxes) == 0 or len(donor_boxes) == 0:
        return None
    d = donor_boxes[rng.integers(len(donor_boxes))]
    w, h = d[2] - d[0], d[3] - d[1]
    src = np.clip([d[0] - margin * w, d[1] - margin * h, d[2] + margin * w, d[3] + margin * h], 0, 1)
    x0, y0, x1, y1 = np.round(src * size).astype(int)
    ph, pw = y1 - y0, x1 - x0
    if ph < 2 or pw < 2 or ph >= size or pw >= size:
        return None
    top, left = int(rng.integers(0, size - ph + 1)), int(rng.integers(0, size - pw + 1))
    pasted = (left / size, top / size, (left + pw) / size, (top + ph) / size)
    donor_area = w * h
    visible = sum(_area(b) - _intersection(b, pasted) for b in boxes)
    weight = float(donor_area / (donor_area + visible)) if donor_area + visible > 0 else 0.0
    return (y0, y1, x0, x1), (top, left), weight


def box_cutmix(img: np.ndarray, boxes: np.ndarray, donor: CachedImage, rng: np.random.Generator, margin: float = 0.1):
    """``img`` with a lesion of ``donor`` pasted in, and the donor's weight; None when there is no plan."""
    plan = plan_cutmix(boxes, donor.boxes, img.shape[0], rng, margin)
    if plan is None:
        return None
    (y0, y1, x0, x1), (top, left), weight = plan
    out = img.copy()
    out[top:top + y1 - y0, left:left + x1 - x0] = donor.train[y0:y1, x0:x1]
    return out, weight


class TrainDataset(Dataset):
    """Augmented training images (uint8 CHW), targets and masks; indexed by the sampler's (seed, index).
    A segmentation cache's target is the image's mask (int64 HW), moved with the image."""

    def __init__(self, cache: ImageCache, targets: np.ndarray, masks: np.ndarray, img_size: int,
                 aug_strength: float, cutmix_p: float, gray_p: float = 0.0, box_targets: bool = False):
        self.cache, self.targets, self.masks = cache, targets, masks
        self.cutmix_p, self.box_targets = cutmix_p, box_targets
        self.transform = build_augmentation(img_size, aug_strength, gray_p, boxes=box_targets)

    def __len__(self):
        return len(self.cache)

    def __getitem__(self, key: tuple[int, int]):
        seed, i = key
        rng = np.random.default_rng(seed)
        self.transform.set_random_state(np.random.default_rng(rng.integers(2**63)), random.Random(int(rng.integers(2**63))))
        img, target, mask = self.cache.train[i], self.targets[i], self.masks[i]
        if self.cutmix_p > 0 and rng.random() < self.cutmix_p:
            j = int(rng.integers(len(self.cache)))
            mixed = box_cutmix(img, self.cache.boxes[i], self.cache[j], rng)
            if mixed is not None:
                img, lam = mixed
                target = (1 - lam) * target + lam * self.targets[j]
                mask = mask * self.masks[j]
        if self.cache.masks_train is not None:
            out = self.transform(image=img, mask=self.cache.masks_train[i])
            return (torch.from_numpy(np.ascontiguousarray(out["image"])).permute(2, 0, 1),
                    torch.from_numpy(out["mask"].astype(np.int64)), torch.from_numpy(mask))
        if self.box_targets:
            img, target = self._with_boxes(img, target)
        else:
            img = self.transform(image=img)["image"]
        return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1), torch.from_numpy(target), torch.from_numpy(mask)

    def _with_boxes(self, img: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The image augmented with its padded (M, 5) box rows (class -1: padding), the rows moved with it."""
        present = rows[rows[:, 0] >= 0]
        out = self.transform(image=img, bboxes=present[:, 1:], classes=present[:, 0])
        moved = np.zeros_like(rows)
        moved[:, 0] = -1
        kept = np.asarray(out["bboxes"], np.float32).reshape(-1, 4)
        moved[:len(kept), 0], moved[:len(kept), 1:] = np.asarray(out["classes"], np.float32), kept
        return out["image"], moved


class EvalDataset(Dataset):
    def __init__(self, images: np.ndarray):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return torch.from_numpy(self.images[i]).permute(2, 0, 1)
