"""The training recipe as one small dataclass. Each key says what it does (``--show-config`` prints that).

Settings are layered: the dataclass defaults, then the task kind's defaults, then the task file's
``train:`` section, then ``--config FILE.yaml``, then flags, then ``--set key=value``. A key that does not
exist, or that the task's kind does not read, is refused with a message that names it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from ..atomic import write_text
from ..keys import did_you_mean
from ..registry import kinds


def opt(default, help: str, choices: tuple = (), probability: bool = False):
    """A config field with its description, its choices, and whether it is a probability (0 to 1). Which kinds
    read a key is the kinds' to say (``Kind.recipe_keys``): a key no kind claims applies to every kind."""
    factory = {"default_factory": (lambda: list(default))} if isinstance(default, list) else {"default": default}
    return field(**factory, metadata={"help": help, "choices": choices, "probability": probability})


@dataclass
class TrainConfig:
    # data and run
    data: str = opt("", "training data folder (the task's reader says which layout)")
    out: str = opt("", "run folder (default runs/<task>-<dataset>)")
    dataset: str = opt("", "name that keeps folds apart (default: the data root's folder name)")
    data_license: str = opt("", "licence of the training data, recorded in bundles (default: the task file's)")
    folds_dir: str = opt("", "where fold files live (default: the project's folds/)")
    folds: str = opt("all", "folds to train in this process: all, or a list such as 0,2")
    n_folds: int = opt(5, "number of folds")
    seed: int = opt(42, "seed of the folds, the initialisation and the augmentation")
    device: str = opt("auto", "auto, cpu, cuda or cuda:N (a list such as cuda:0,1 on the command line: one job per device)")
    precision: str = opt("auto", "autocast: auto (bf16/fp16 on CUDA, bf16 on a CPU that has it, else fp32)",
                         choices=("auto", "fp32", "bf16", "fp16"))
    workers: int = opt(-1, "loader processes with augment cpu; -1: every core but one on CUDA (at most 16), 1 on CPU")
    augment: str = opt("auto", "where images are augmented: cpu (albumentations, in loader processes), device (in "
                       "torch, on the training device, from a cache held there), auto (device on a GPU that holds the "
                       "cache, else cpu)", choices=("auto", "cpu", "device"))
    compile: bool = opt(False, "torch.compile the network for the training step (CUDA; minutes of compiling first)")
    checkpoint_every: float = opt(60.0, "seconds between saves of the resume state (0: after every epoch)")
    # recipe
    recipe: str = opt("finetune", "finetune (train the network) or probe (a logistic regression on frozen features)", choices=("finetune", "probe"))
    probe_c: float = opt(0.0, "inverse regularisation of the probe's regression; 0 chooses it by inner cross-validation")
    head_init: str = opt("random", "classifier start: random, or probe (the fold's probe: linear probe, then fine-tune)", choices=("random", "probe"))
    backbone_lr: float = opt(1.0, "the backbone's (segmentation: the encoder's) learning rate as a fraction of lr")
    layer_decay: float = opt(1.0, "layer-wise LR decay: each block closer to the input gets this fraction of the next")
    # network
    backbone: str = opt("tf_efficientnet_lite0", "any timm model name (segmentation: the encoder)")
    architecture: str = opt("Unet", "the segmentation network (segmentation-models-pytorch): Unet, UnetPlusPlus, FPN, "
                            "DeepLabV3Plus, Linknet, MAnet, PAN, UPerNet, Segformer; the detector (torchvision): "
                            "fcos (detection's default), retinanet, faster-rcnn")
    pretrained: str = opt("imagenet", "none, imagenet (offline, tf_efficientnet_lite0/1/2), hub, or a state dict file")
    input_norm: str = opt("backbone", "input normalisation: backbone (its pretrained mean and std) or image (each "
                          "image's channels z-scored on their own, for scans such as MRI with no absolute "
                          "intensity scale)", choices=("backbone", "image"))
    img_size: int = opt(224, "input size in pixels (square; segmentation: a multiple of 32)")
    drop_rate: float = opt(0.2, "dropout before the classifier")
    # optimisation
    epochs: int = opt(15, "epochs per fold (at most)")
    batch_size: int = opt(16, "images per step (per process under torchrun)")
    lr: float = opt(1e-3, "peak learning rate (AdamW)")
    weight_decay: float = opt(0.01, "AdamW weight decay (not on biases and norms)")
    warmup_epochs: float = opt(1.0, "linear warm-up, then cosine decay")
    grad_clip: float = opt(2.0, "gradient norm clip")
    ema_decay: float = opt(0.995, "EMA of the weights (0: off); validated and exported")
    select_epoch: str = opt("last", "each fold's network: the last epoch (honest OOF), or the best on its validation "
                            "fold (early stopping; its OOF is optimistic)", choices=("last", "best"))
    patience: int = opt(6, "with select_epoch best: epochs without a better validation score before a fold stops")
    # regularisation and augmentation
    label_smoothing: float = opt(0.1, "label smoothing of the targets")
    aug_strength: float = opt(1.0, "scales every augmentation's range; 0 turns them off (flips stay)")
    cutmix_p: float = opt(0.3, "probability of box-guided CutMix per image (needs lesion boxes)",
                          probability=True)
    gray_p: float = opt(0.0, "probability of turning a training image gray (its three channels their weighted "
                        "mean), for sets where some images are gray or a missing channel was filled from another; "
                        "not scaled by aug_strength", probability=True)
    cache_scale: float = opt(1.15, "training images are cached at cache_scale * img_size")
    allow_missing_classes: bool = opt(False, "train even when a class (or label) has no training image; its "
                                      "scores then mean nothing, so this is an error unless set")
    # kind-specific
    imbalance: str = opt("weights", "class imbalance: none, weights (1/sqrt(frequency) in the loss), sampler "
                         "or both", choices=("none", "weights", "sampler", "both"))
    label_weights: list = opt(["auto"], "loss weight per label, or auto (1/sqrt(p(1-p)) of the positive rate)")
    soft_f1_weight: float = opt(0.0, "weight of the soft-F1 auxiliary loss")
    dice_weight: float = opt(1.0, "weight of the Dice loss beside the BCE (one class) or cross-entropy (several)")
    task_weighting: str = opt("fixed", "fixed (label_weights) or uncertainty (also learned, Kendall et al. 2018)", choices=("fixed", "uncertainty"))


# Keys that may differ when a run folder is resumed or shared between processes.
RUNTIME_KEYS = {"folds", "device", "workers", "out", "data", "folds_dir", "checkpoint_every", "compile"}
# Keys that describe where a run lives on one machine: never written into a bundle.
MACHINE_KEYS = {"data", "out", "folds_dir", "folds", "device", "workers", "checkpoint_every", "compile"}
RENAMED = {"feature_weights": "label_weights"}


def config_fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in fields(TrainConfig)}


def readers_of(key: str) -> list[str]:
    """The kinds that claim ``key`` as their own; empty for a key every kind reads."""
    return [name for name, kind in kinds().items() if key in kind.recipe_keys]


def applies(key: str, kind) -> bool:
    return key in kind.recipe_keys or not readers_of(key)


def check_key(key: str, kind) -> None:
    known = config_fields()
    if key in RENAMED:
        raise ValueError(f"config key {key!r} is now called {RENAMED[key]!r}")
    if key not in known:
        raise ValueError(f"unknown config key {key!r}{did_you_mean(key, known)} "
                         "(python train.py --show-config lists every key and what it does)")
    if not applies(key, kind):
        raise ValueError(f"config key {key!r} is for {' and '.join(readers_of(key))} tasks; this task is {kind.name}")


def coerce(key: str, value, kind):
    """Turn a YAML or command-line value into the type of field ``key``; errors name the key."""
    check_key(key, kind)
    meta = config_fields()[key].metadata
    default = getattr(TrainConfig(), key)
    try:
        if isinstance(default, list):
            value = value if isinstance(value, list) else [v for v in str(value).split(",") if v.strip()]
            value = [v if v == "auto" else float(v) for v in value]
        elif isinstance(default, bool):
            truth = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
            value = value if isinstance(value, bool) else truth[str(value).lower()]
        else:
            value = type(default)(value)
    except (TypeError, ValueError, KeyError):
        raise ValueError(f"{key}={value!r}: expected {type(default).__name__}, like {default!r}") from None
    if meta["choices"] and value not in meta["choices"]:
        raise ValueError(f"{key}={value!r}: choose from {', '.join(meta['choices'])}")
    if meta["probability"] and not 0 <= value <= 1:
        raise ValueError(f"{key}={value!r}: a probability, from 0 to 1")
    return value


def build_config(task, yaml_file: str | Path | None = None, overrides: dict | None = None) -> TrainConfig:
    """The recipe for ``task``: defaults, the kind's defaults, the task file's train:, the YAML file, then
    ``overrides`` (None values are left out)."""
    cfg = dataclasses.replace(TrainConfig(), **task.kind.defaults)
    layers = [(f"{task.source}: train", task.train)]
    if yaml_file:
        try:
            loaded = yaml.safe_load(Path(yaml_file).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError, UnicodeDecodeError) as e:
            raise ValueError(f"{yaml_file}: cannot read this config ({e})") from e
        if not isinstance(loaded, dict):
            raise ValueError(f"{yaml_file}: expected a mapping of config keys")
        layers.append((str(yaml_file), loaded))
    layers.append(("", {k: v for k, v in (overrides or {}).items() if v is not None}))
    for where, values in layers:
        try:
            cfg = dataclasses.replace(cfg, **{k: coerce(k, v, task.kind) for k, v in values.items()})
        except ValueError as e:
            raise ValueError(f"{where}: {e}" if where else str(e)) from None
    if not cfg.data_license:
        cfg.data_license = str(task.data.get("license", ""))
    task.kind.check_config(cfg)
    return cfg


def describe(cfg: TrainConfig, kind) -> str:
    """The keys that apply to ``kind``, with their values and what each does (``--show-config``)."""
    lines = []
    for name, f in config_fields().items():
        if applies(name, kind):
            # One "key: value" line per key, valid YAML for a config file (a flow mapping would print {key: value}).
            text = yaml.safe_dump(getattr(cfg, name), allow_unicode=True, default_flow_style=True, width=10_000)
            value = f"{name}: {text.removesuffix(chr(10)).removesuffix('...').strip()}"
            lines.append(f"{value:<40} # {f.metadata['help']}")
    return "\n".join(lines) + "\n"


def applicable(cfg: TrainConfig, kind) -> dict:
    """The keys of ``cfg`` that ``kind`` reads, with their values: what saved configs hold."""
    return {k: v for k, v in asdict(cfg).items() if applies(k, kind)}


def to_yaml(cfg: TrainConfig, kind) -> str:
    return yaml.safe_dump(applicable(cfg, kind), sort_keys=False, allow_unicode=True)


def read_config(path: str | Path, kind) -> TrainConfig:
    """A run folder's config.yaml (every key written, so no layering)."""
    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ValueError("expected a mapping of recipe keys")
        return dataclasses.replace(TrainConfig(), **{k: coerce(k, v, kind) for k, v in loaded.items()
                                                     if k not in config_fields() or applies(k, kind)})
    except (OSError, yaml.YAMLError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path}: this run's config cannot be used ({e}). Restore it, or train into a new --out") from e


def save_config(cfg: TrainConfig, path: str | Path, kind) -> None:
    write_text(path, to_yaml(cfg, kind))


def portable(cfg: TrainConfig, kind) -> dict:
    """The recipe without machine paths and per-process settings, as a bundle records it."""
    return {k: v for k, v in applicable(cfg, kind).items() if k not in MACHINE_KEYS}


def differing_keys(a: TrainConfig, b: TrainConfig) -> list[str]:
    return [k for k in config_fields() if k not in RUNTIME_KEYS and getattr(a, k) != getattr(b, k)]


def selected_folds(cfg: TrainConfig) -> list[int]:
    if cfg.folds == "all":
        return list(range(cfg.n_folds))
    try:
        chosen = sorted({int(f) for f in str(cfg.folds).split(",") if f.strip()})
    except ValueError:
        raise ValueError(f"folds={cfg.folds!r}: expected all or a list such as 0,2") from None
    bad = [f for f in chosen if not 0 <= f < cfg.n_folds]
    if bad:
        raise ValueError(f"folds {bad} out of range: n_folds is {cfg.n_folds}")
    return chosen
