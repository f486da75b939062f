"""Task kinds: each one a plug-in behind the interface in ``model.kinds.base``, registered by name in
``model.registry`` when its module is imported. The entry points import this package; the core never does.

=================  ======================================================================
``single-label``   one class per image (softmax); model.kinds.classification
``multi-label``    several yes/no labels per image, some unknown (sigmoids); same module
``segmentation``   a class per pixel (U-Net and friends, segmentation-models-pytorch);
                   model.kinds.segmentation
``detection``      boxes of object classes (torchvision's FCOS, RetinaNet, Faster R-CNN on
                   a timm encoder); model.kinds.detection
=================  ======================================================================

A new kind is a module with a ``Kind`` subclass under ``@register``, its import here, and its tuning search
space (``model/training/search_spaces/<kind>.yaml``).
"""
from __future__ import annotations

from ..registry import kinds
from . import birads_v1, classification, detection, segmentation  # noqa: F401  (each registers its kinds; birads_v1 an upgrade)
from .base import Kind

SINGLE_LABEL, MULTI_LABEL, SEGMENTATION, DETECTION = (kinds()[name] for name in ("single-label", "multi-label",
                                                                                  "segmentation", "detection"))

__all__ = ["DETECTION", "MULTI_LABEL", "SEGMENTATION", "SINGLE_LABEL", "Kind"]
