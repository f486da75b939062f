"""The training recipe as one small dataclass: defaults per task, a YAML file and flags override it."""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from ..atomic import write_text


@dataclass
class TrainConfig:
    # data and run
    data: str = ""                 # folder with the official layout (see model/data.py)
    out: str = ""                  # run folder; default runs/<task>-<dataset>
    dataset: str = ""              # name that keeps folds apart; default: the data root's folder name
    folds_dir: str = ""            # where fold files live; default: the project's folds/
    folds: str = "all"             # which folds to train here: "all" or "0,2"
    n_folds: int = 5
    seed: int = 42
    device: str = "auto"
    precision: str = "auto"        # auto: bf16/fp16 on CUDA, bf16 on a CPU that supports it, else fp32
    workers: int = 2
    # network
    backbone: str = "tf_efficientnet_lite0"
    pretrained: str = "imagenet"   # none | imagenet (offline) | hub | path to a state dict
    img_size: int = 224
    drop_rate: float = 0.2
    # optimisation
    epochs: int = 15
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_epochs: float = 1.0
    grad_clip: float = 2.0
    ema_decay: float = 0.995       # with timm's warm-up, so it helps on a few hundred steps too
    patience: int = 6              # epochs without a better validation score before stopping
    # regularisation and augmentation
    label_smoothing: float = 0.1
    aug_strength: float = 1.0      # scales every augmentation's range; 0 turns them off
    cutmix_p: float = 0.3          # probability of box-guided CutMix per training image
    cache_scale: float = 1.15      # training images are cached at cache_scale * img_size
    # task-specific
    imbalance: str = "weights"     # cla: none | weights | sampler | both
    feature_weights: list = field(default_factory=lambda: ["auto"])  # fea: 4 numbers, or ["auto"]
    soft_f1_weight: float = 0.0    # fea: weight of the soft-F1 auxiliary loss
    task_weighting: str = "fixed"  # fea: fixed (feature_weights) | uncertainty (also learned, Kendall et al.)


CHOICES = {"imbalance": ("none", "weights", "sampler", "both"), "precision": ("auto", "fp32", "bf16", "fp16"),
           "task_weighting": ("fixed", "uncertainty")}
# Keys that may differ when a run folder is resumed or shared between processes.
RUNTIME_KEYS = {"folds", "device", "workers", "out", "data", "folds_dir"}


def config_fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in fields(TrainConfig)}


def coerce(key: str, value):
    """Turn a YAML or command-line value into the type of field ``key``."""
    known = config_fields()
    if key not in known:
        raise ValueError(f"unknown config key {key!r}; valid keys: {', '.join(known)}")
    default = getattr(TrainConfig(), key)
    if isinstance(default, list):
        value = value if isinstance(value, list) else [v for v in str(value).split(",") if v]
        return [v if v == "auto" else float(v) for v in value]
    if isinstance(default, bool):
        return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
    value = type(default)(value)
    if key in CHOICES and value not in CHOICES[key]:
        raise ValueError(f"{key}={value!r}: choose from {', '.join(CHOICES[key])}")
    return value


def build_config(defaults: TrainConfig, yaml_file: str | Path | None = None, overrides: dict | None = None) -> TrainConfig:
    values = {}
    if yaml_file:
        loaded = yaml.safe_load(Path(yaml_file).read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{yaml_file}: expected a mapping of config keys")
        values.update(loaded)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return dataclasses.replace(defaults, **{k: coerce(k, v) for k, v in values.items()})


def to_yaml(cfg: TrainConfig) -> str:
    return yaml.safe_dump(asdict(cfg), sort_keys=False, allow_unicode=True)


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    write_text(path, to_yaml(cfg))


def differing_keys(a: TrainConfig, b: TrainConfig) -> list[str]:
    return [k for k in config_fields() if k not in RUNTIME_KEYS and getattr(a, k) != getattr(b, k)]


def selected_folds(cfg: TrainConfig) -> list[int]:
    if cfg.folds == "all":
        return list(range(cfg.n_folds))
    chosen = sorted({int(f) for f in str(cfg.folds).split(",") if f.strip()})
    bad = [f for f in chosen if not 0 <= f < cfg.n_folds]
    if bad:
        raise ValueError(f"folds {bad} out of range: n_folds is {cfg.n_folds}")
    return chosen
