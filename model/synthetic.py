"""Synthetic ultrasound-like images: for the pre-flight check's dry run, benchmarks and tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def fake_ultrasound(seed: int, size=(80, 96), label: int = 0, border: int = 8) -> np.ndarray:
    """A noisy grey sector with a dark 'lesion' whose size grows with ``label``, inside a black frame."""
    rng = np.random.default_rng(seed)
    h, w = size
    img = np.zeros((h, w, 3), dtype=np.uint8)
    inner = rng.integers(60, 160, size=(h - 2 * border, w - 2 * border, 1), dtype=np.uint8)
    img[border:h - border, border:w - border] = inner
    cy, cx, r = h // 2, w // 2, max(3, min(h, w) // 12) + 2 * label
    yy, xx = np.ogrid[:h, :w]
    img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 20
    return img


def save_image(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(array)
    if mode == "I;16":
        im = Image.fromarray(array[..., 0].astype(np.uint16) * 257)
    elif mode:
        im = im.convert(mode)
    im.save(path)
    return path


# (extension, mode, (height, width)): the awkward kinds a test set can hold.
AWKWARD = [(".png", "RGB", (540, 720)), (".jpg", "L", (600, 800)), (".png", "RGBA", (480, 640)),
           (".png", "I;16", (512, 512)), (".JPG", "RGB", (1200, 1600)), (".bmp", "P", (400, 500)),
           (".jpeg", "RGB", (768, 1024)), (".png", "L", (900, 1100))]


def make_awkward_folder(folder: Path, n: int) -> list[Path]:
    """``n`` numbered images cycling through AWKWARD, as a test set would name them."""
    paths = []
    for i in range(1, n + 1):
        ext, mode, size = AWKWARD[(i - 1) % len(AWKWARD)]
        paths.append(save_image(folder / f"{i:04d}{ext}", fake_ultrasound(i, size, i % 6, border=size[0] // 20), mode))
    return paths


def fake_scan(seed: int, size=(64, 64), lesion: bool = True, value: int = 255) -> tuple[np.ndarray, np.ndarray]:
    """(image, mask) for segmentation tests: a noisy grey scan with a bright disc at a random place, and
    its mask (``value`` inside the disc, 0 elsewhere; all 0 when ``lesion`` is False)."""
    rng = np.random.default_rng(seed)
    h, w = size
    img = rng.integers(30, 90, size=(h, w, 1), dtype=np.uint8).repeat(3, axis=2)
    mask = np.zeros((h, w), np.uint8)
    if lesion:
        r = int(rng.integers(max(2, min(h, w) // 10), max(3, min(h, w) // 5)))
        cy, cx = int(rng.integers(r, h - r)), int(rng.integers(r, w - r))
        yy, xx = np.ogrid[:h, :w]
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        img[inside] = np.clip(img[inside].astype(int) + 120, 0, 255).astype(np.uint8)
        mask[inside] = value
    return img, mask
