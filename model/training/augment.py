"""Augmentation on the training device: the cache lives there and each batch is augmented in one go.

The same recipe as the CPU pipeline (model.training.dataset), batched in torch: box-guided CutMix
(``plan_cutmix``, shared with the CPU path), a horizontal flip, a mild affine (scale, shift, small
rotation, black fill) fused with the resize from the cache size into one ``grid_sample``, gray, brightness
and contrast, and a Gaussian blur or noise. No loader processes, no copies to pinned memory, no decoding:
on a GPU the step is what remains, where the CPU pipeline had a GPU busy 42% of the time. Random
parameters are drawn on the CPU from the sampler's seeds, so a run repeats exactly (CPU) or closely (GPU
kernels) and does not depend on the device it runs on.

It differs from the CPU pipeline in its resampling (bilinear, where the CPU path resizes with INTER_AREA)
and in applying intensity changes after the resize; benchmarks/quality.py compares the two recipes.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .dataset import GRAY_WEIGHTS, EpochSampler, ImageCache, plan_cutmix


def gaussian_kernel(size: int, device) -> torch.Tensor:
    """OpenCV's default sigma for a kernel of ``size`` (as albumentations' GaussianBlur uses)."""
    sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    x = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    k = torch.exp(-x ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    return (k[:, None] * k[None, :]).expand(3, 1, size, size)


class DeviceLoader:
    """Augmented batches (float 0..255 NCHW on ``device``), their targets and masks, for one epoch at a time."""

    def __init__(self, cache: ImageCache, targets: np.ndarray, masks: np.ndarray, sampler: EpochSampler,
                 batch_size: int, img_size: int, strength: float, cutmix_p: float, device: torch.device,
                 gray_p: float = 0.0):
        self.images = torch.from_numpy(cache.train).to(device).permute(0, 3, 1, 2)   # uint8 (N, 3, S, S)
        # A segmentation cache's masks (N, S, S) move with their images and are the batch's targets.
        self.mask_images = None if cache.masks_train is None else torch.from_numpy(cache.masks_train).to(device)
        self.boxes = cache.boxes
        self.targets = torch.from_numpy(targets).to(device)
        self.masks = torch.from_numpy(masks).to(device)
        self.sampler, self.batch_size, self.img_size = sampler, batch_size, img_size
        self.strength, self.cutmix_p, self.device, self.gray_p = strength, cutmix_p, device, gray_p

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def __iter__(self):
        pairs = list(self.sampler)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            seeds, indices = zip(*pairs[start:start + self.batch_size])
            yield self.batch(np.random.default_rng(seeds[0]), np.array(indices))

    def batch(self, rng: np.random.Generator, indices: np.ndarray):
        images = self.images[torch.from_numpy(indices).to(self.device)].float()
        targets, masks = self.targets[indices].clone(), self.masks[indices].clone()
        if self.cutmix_p > 0:
            self._cutmix(rng, images, indices, targets, masks)
        grid = self._grid(rng, len(images))
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if self.mask_images is not None:
            chosen = self.mask_images[torch.from_numpy(indices).to(self.device)][:, None].float()
            targets = F.grid_sample(chosen, grid, mode="nearest", padding_mode="zeros", align_corners=False)[:, 0].long()
        if self.gray_p > 0:
            self._gray(rng, images)
        if self.strength > 0:
            images = self._intensity(rng, images)
        return images, targets, masks

    def _cutmix(self, rng, images, indices, targets, masks) -> None:
        size = images.shape[-1]
        for b, i in enumerate(indices):
            if rng.random() >= self.cutmix_p:
                continue
            j = int(rng.integers(len(self.images)))
            plan = plan_cutmix(self.boxes[i], self.boxes[j], size, rng)
            if plan is None:
                continue
            (y0, y1, x0, x1), (top, left), weight = plan
            images[b, :, top:top + y1 - y0, left:left + x1 - x0] = self.images[j, :, y0:y1, x0:x1].float()
            targets[b] = (1 - weight) * targets[b] + weight * self.targets[j]
            masks[b] = masks[b] * self.masks[j]

    def _grid(self, rng, n: int) -> torch.Tensor:
        """Flip and affine into an img_size output: one sampling grid per image (black outside)."""
        s = self.strength
        flip = rng.random(n) < 0.5
        affine = (rng.random(n) < 0.7) & (s > 0)
        scale = np.where(affine, rng.uniform(1 - 0.15 * s, 1 + 0.15 * s, n), 1.0)
        shift = np.where(affine[:, None], rng.uniform(-0.06 * s, 0.06 * s, (n, 2)), 0.0) * 2  # normalised -1..1
        angle = np.where(affine, np.radians(rng.uniform(-10 * s, 10 * s, n)), 0.0)
        cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
        # The output pixel p samples the input at A^-1 (p - t): the inverse of rotating, scaling, shifting.
        theta = np.zeros((n, 2, 3))
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, sin, -sin, cos
        theta[:, :, 2] = -np.einsum("nij,nj->ni", theta[:, :, :2], shift)
        theta[flip, 0, :] *= -1                                       # the flip comes first, in input space
        return F.affine_grid(torch.as_tensor(theta, dtype=torch.float32, device=self.device),
                             [n, 3, self.img_size, self.img_size], align_corners=False)

    def _gray(self, rng, images: torch.Tensor) -> None:
        chosen = np.flatnonzero(rng.random(len(images)) < self.gray_p)
        if len(chosen):
            index = torch.from_numpy(chosen).to(self.device)
            weights = torch.tensor(GRAY_WEIGHTS, device=self.device).view(1, 3, 1, 1)
            images[index] = (images[index] * weights).sum(1, keepdim=True).expand(-1, 3, -1, -1)

    def _intensity(self, rng, images: torch.Tensor) -> torch.Tensor:
        n, s = len(images), self.strength
        change = rng.random(n) < 0.6
        alpha = np.where(change, 1 + rng.uniform(-0.2 * s, 0.2 * s, n), 1.0)
        beta = np.where(change, rng.uniform(-0.2 * s, 0.2 * s, n) * 255, 0.0)
        view = (-1, 1, 1, 1)
        images = images * torch.as_tensor(alpha, dtype=torch.float32, device=self.device).view(view) \
            + torch.as_tensor(beta, dtype=torch.float32, device=self.device).view(view)
        degrade = rng.random(n) < min(1.0, 0.3 * s)
        blur = degrade & (rng.random(n) < 0.5)
        kernel = np.where(rng.random(n) < 0.5, 3, 5)
        for size in (3, 5):
            chosen = np.flatnonzero(blur & (kernel == size))
            if len(chosen):
                index = torch.from_numpy(chosen).to(self.device)
                images[index] = F.conv2d(F.pad(images[index], [size // 2] * 4, mode="reflect"),
                                         gaussian_kernel(size, self.device), groups=3)
        noisy = np.flatnonzero(degrade & ~blur)
        if len(noisy):
            std = torch.as_tensor(rng.uniform(0.02 * s, 0.06 * s, len(noisy)) * 255, dtype=torch.float32,
                                  device=self.device).view(view)
            generator = torch.Generator(device=self.device).manual_seed(int(rng.integers(2**62)))
            noise = torch.randn((len(noisy), 3, self.img_size, self.img_size), generator=generator, device=self.device)
            index = torch.from_numpy(noisy).to(self.device)
            images[index] += noise * std
        return images.clamp_(0, 255)


def fits_on_device(cache: ImageCache, device: torch.device, share: float = 0.5) -> bool:
    """Whether the training cache fits in ``share`` of the device's free memory (always on CPU)."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return cache.train.nbytes < share * free
