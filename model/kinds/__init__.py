"""Task kinds: each one a plug-in behind the interface in ``model.kinds.base``.

=================  ======================================================================
``single-label``   one class per image (softmax); model.kinds.classification
``multi-label``    several yes/no labels per image, some unknown (sigmoids); same module
``segmentation``   a class per pixel (U-Net and friends, segmentation-models-pytorch);
                   model.kinds.segmentation
=================  ======================================================================

A new kind is a module with a ``Kind`` subclass and one line here.
"""
from __future__ import annotations

from .base import Kind
from .classification import MultiLabel, SingleLabel
from .segmentation import Segmentation

SINGLE_LABEL, MULTI_LABEL, SEGMENTATION = SingleLabel(), MultiLabel(), Segmentation()
KINDS: dict[str, Kind] = {kind.name: kind for kind in (SINGLE_LABEL, MULTI_LABEL, SEGMENTATION)}

__all__ = ["KINDS", "MULTI_LABEL", "SEGMENTATION", "SINGLE_LABEL", "Kind"]
