"""The fold ensemble and test-time augmentation: fold networks behind their input normalisation, every TTA
view in one batch, each view turned back to the original frame by the task's kind before the mean."""
from __future__ import annotations

import torch
import ttach
from torch import nn

from .network import InputNorm

TTA_TRANSFORMS = {
    "hflip": ttach.HorizontalFlip,
    # Brightness changes; no rotations or vertical flips: they change "direction" and the skin line.
    "multiply": lambda: ttach.Multiply([0.9, 1.0, 1.1]),
}


class FoldEnsemble(nn.Module):
    """Fold networks with their input normalisation; uint8 images in, averaged probabilities out."""

    name = "pytorch"

    def __init__(self, nets: list[nn.Module], mean, std, kind, input_norm: str = "backbone"):
        super().__init__()
        self.nets = nn.ModuleList(nets)
        self.kind = kind
        self.norm = InputNorm(mean, std, input_norm)
        self.input_format = torch.contiguous_format  # the layout predict() wants; see set_layout

    def set_layout(self, memory_format: torch.memory_format) -> "FoldEnsemble":
        """Weights and expected inputs in ``memory_format`` (channels_last is faster on CPU and CUDA)."""
        self.input_format = memory_format
        return self.to(memory_format=memory_format)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.norm(images)
        return self.kind.combine(torch.stack([self.kind.probabilities(n(x)) for n in self.nets]).float())

    def predict(self, images: torch.Tensor, tta: ttach.Compose | None = None) -> torch.Tensor:
        """Probabilities averaged over TTA views and folds; all views go through in one batch."""
        if tta is None:
            return self(images)
        return merge_views(self.kind, tta, self(tta_views(images, tta)), len(images))


def tta_views(images: torch.Tensor, tta: ttach.Compose) -> torch.Tensor:
    """Every TTA view of a batch, view after view, as one batch."""
    return torch.cat([t.augment_image(images) for t in tta])


def merge_views(kind, tta: ttach.Compose, outputs: torch.Tensor, n: int) -> torch.Tensor:
    """Each image's outputs over its TTA views, combined by the kind (a mean; boxes are fused), every view
    first turned back to the original frame (a flipped mask is flipped back; a class probability stays)."""
    views = outputs.view(len(tta), n, *outputs.shape[1:])
    return kind.combine(torch.stack([kind.deaugment(t, view) for t, view in zip(tta, views)]))


def make_tta(names: str) -> ttach.Compose | None:
    """``"none"``, or a comma list of TTA_TRANSFORMS names (e.g. ``"hflip"``, ``"hflip,multiply"``)."""
    wanted = [n.strip() for n in names.split(",") if n.strip() and n.strip() != "none"]
    unknown = [n for n in wanted if n not in TTA_TRANSFORMS]
    if unknown:
        raise ValueError(f"unknown TTA {unknown}; choose from none, {', '.join(TTA_TRANSFORMS)}")
    return ttach.Compose([TTA_TRANSFORMS[n]() for n in wanted]) if wanted else None
