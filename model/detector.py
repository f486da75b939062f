"""Detection networks: torchvision's detectors (FCOS, RetinaNet, Faster R-CNN) on a timm encoder with a
feature pyramid, its pretrained weights from the same offline sources as a classifier's (model.network).

torchvision builds the detectors, their losses and their box decoding; what is written here is only the
glue none of them has: a timm features-only encoder behind torchvision's ``FeaturePyramidNetwork`` (timm's
encoders have no FPN, torchvision's FPN helpers take only its own ResNets and MobileNets), anchors scaled to
the pyramid's strides rather than to 800 px COCO images, and the detectors' own resize and normalisation
turned off: the harness feeds them square, normalised inputs (model.network.InputNorm, the same as every
kind), so that every path (training, run.py, TTA) sees the same pixels.

``Detector`` wraps one so that it looks like every other network of the harness: a batch of images in, a
fixed-shape tensor out, (N, MAX_DETECTIONS, 6) rows of x1, y1, x2, y2 (relative to the image, 0..1), score
and class (0-based), the empty rows' score 0 and class -1. A list of any length per image thus travels
through the fold ensemble, TTA, the OOF store, run.py and ONNX as an array; in training it takes the
targets in the same padded form, (N, M, 5) rows of class (-1: padding) and x1, y1, x2, y2 relative, and
returns the detector's loss. Inside, torchvision's labels are 1..K (0 is Faster R-CNN's background; the
same shift is used for all three).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

DETECTORS = ("fcos", "retinanet", "faster-rcnn")
MAX_DETECTIONS = 100      # boxes kept per image and network, as COCO's evaluation counts them (maxDets 100)
FPN_CHANNELS = 128        # torchvision's detectors use 256 on a ResNet-50; a light encoder needs fewer
ENCODER_LEVELS = (2, 3, 4)  # timm feature levels at strides 8, 16, 32 (P3-P5), as torchvision's detectors take


class TimmPyramid(nn.Module):
    """A timm encoder's strides 8-32 through a feature pyramid, with P6/P7 (FCOS, RetinaNet) or a max-pooled
    level (Faster R-CNN) on top: the ``backbone`` torchvision's detectors expect (``out_channels`` set)."""

    def __init__(self, encoder: nn.Module, extra: str):
        super().__init__()
        from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7
        self.body = encoder
        blocks = LastLevelP6P7(FPN_CHANNELS, FPN_CHANNELS) if extra == "p6p7" else LastLevelMaxPool()
        self.fpn = FeaturePyramidNetwork(list(encoder.feature_info.channels()), FPN_CHANNELS, extra_blocks=blocks)
        self.out_channels = FPN_CHANNELS

    def forward(self, x: torch.Tensor) -> OrderedDict:
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.body(x))))


class Detector(nn.Module):
    """A torchvision detector behind the harness's network contract (see the module's docstring)."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector

    @property
    def encoder(self) -> nn.Module:
        """The pretrained part (model.network.head_parameters: everything else is the head)."""
        return self.detector.backbone.body

    def forward(self, images: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        size = torch.tensor(images.shape[-2:][::-1], dtype=torch.float32, device=images.device).repeat(2)  # w h w h
        if targets is not None:
            return sum(self.detector(list(images), unpad_targets(targets, size)).values())
        return pad_detections(self.detector(list(images)), size)


def unpad_targets(targets: torch.Tensor, size: torch.Tensor) -> list[dict]:
    """torchvision's target dicts (boxes in pixels, labels 1..K) from padded (N, M, 5) relative rows."""
    out = []
    for rows in targets:
        rows = rows[rows[:, 0] >= 0]
        out.append({"boxes": rows[:, 1:].float() * size, "labels": rows[:, 0].long() + 1})
    return out


def pad_detections(detections: list[dict], size: torch.Tensor) -> torch.Tensor:
    """(N, MAX_DETECTIONS, 6) relative x1, y1, x2, y2, score, class (-1 and score 0 where there is none)."""
    out = torch.zeros(len(detections), MAX_DETECTIONS, 6, device=size.device)
    out[..., 5] = -1
    for i, found in enumerate(detections):
        k = min(len(found["scores"]), MAX_DETECTIONS)
        out[i, :k, :4] = found["boxes"][:k].float() / size
        out[i, :k, 4] = found["scores"][:k].float()
        out[i, :k, 5] = found["labels"][:k].float() - 1
    return out


def create_detector(architecture: str, backbone: str, num_classes: int, encoder_state: dict | None = None) -> Detector:
    """A torchvision detector for ``num_classes`` object classes, its encoder ``backbone`` (a timm name)
    loaded from ``encoder_state`` (a timm classifier's state dict) when given."""
    import timm
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    class AsGiven(GeneralizedRCNNTransform):
        """No resize: the harness gives every network its input at the trained size already."""

        def resize(self, image, target=None):
            return image, target

    if architecture not in DETECTORS:
        raise ValueError(f"unknown detector {architecture!r}: choose one of {', '.join(DETECTORS)}")
    encoder = timm.create_model(backbone, features_only=True, out_indices=ENCODER_LEVELS)
    if encoder_state is not None:
        own = encoder.state_dict()
        usable = {k: v for k, v in encoder_state.items() if k in own and v.shape == own[k].shape}
        if len(usable) < len(own):
            raise ValueError(f"the pretrained weights of {backbone} cover {len(usable)} of its encoder's {len(own)} "
                             "tensors")
        encoder.load_state_dict(usable)
    strides = list(encoder.feature_info.reduction())
    classes = num_classes + 1  # 0: background (Faster R-CNN), never a target label for the others
    detector = _torchvision_detector(architecture, encoder, strides, classes)
    # The detectors' own transform neither resizes nor normalises (model.network.InputNorm did that).
    detector.transform = AsGiven(1, 1, [0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
    return Detector(detector)


def _torchvision_detector(architecture: str, encoder: nn.Module, strides: list[int], classes: int) -> nn.Module:
    from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign
    common = {"min_size": 1, "max_size": 1, "detections_per_img": MAX_DETECTIONS}
    if architecture == "faster-rcnn":
        pyramid = TimmPyramid(encoder, "pool")
        levels = [*strides, strides[-1] * 2]
        anchors = AnchorGenerator(tuple((4 * s,) for s in levels), ((0.5, 1.0, 2.0),) * len(levels))
        pool = MultiScaleRoIAlign([str(i) for i in range(len(strides))] + ["pool"], output_size=7, sampling_ratio=2)
        return FasterRCNN(pyramid, classes, rpn_anchor_generator=anchors, box_roi_pool=pool, **common)
    pyramid = TimmPyramid(encoder, "p6p7")
    levels = [*strides, strides[-1] * 2, strides[-1] * 4]
    if architecture == "fcos":
        # One anchor per location at the level's stride: FCOS regresses distances from the location, and
        # torchvision's FCOS assigns a location to a level by its anchor's size (as the paper's ranges do).
        anchors = AnchorGenerator(tuple((s,) for s in levels), ((1.0,),) * len(levels))
        # A lower score floor than torchvision's 0.2: COCO's mAP needs the low-scoring boxes of the PR curve.
        return FCOS(pyramid, classes, anchor_generator=anchors, score_thresh=0.05, **common)
    # RetinaNet's three scales and three ratios per level, at four strides rather than COCO's 32-512 px.
    anchors = AnchorGenerator(tuple(tuple(4 * s * 2 ** (k / 3) for k in range(3)) for s in levels),
                              ((0.5, 1.0, 2.0),) * len(levels))
    return RetinaNet(pyramid, classes, anchor_generator=anchors, **common)
