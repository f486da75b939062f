"""The command-line pieces that training and tuning share: the task file, recipe flags and --set."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..task import load_task

PROJECT = Path(__file__).resolve().parents[2]
# Flags that set a recipe key of the same name (--img-size sets img_size), with their types.
FLAG_KEYS = {"data": str, "folds": str, "epochs": int, "img_size": int, "backbone": str, "batch_size": int,
             "device": str, "workers": int}


def add_task_flags(p: argparse.ArgumentParser, default_task: Path | None, folds_default: str = "all") -> None:
    p.add_argument("--task", type=Path, default=default_task, required=default_task is None,
                   help="the task file (YAML)" + (f"; default {default_task.relative_to(PROJECT)}" if default_task else ""))
    p.add_argument("--config", help="YAML file of recipe keys (e.g. a tuning study's best_config.yaml)")
    p.add_argument("--data", help="training data folder, in the layout the task's reader expects")
    p.add_argument("--folds", help=f"folds to train here, e.g. 0,2 (default {folds_default})")
    p.add_argument("--epochs", type=int)
    p.add_argument("--img-size", type=int)
    p.add_argument("--backbone", help="any timm model name")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N, or a list such as cuda:0,1,2,3 (with --jobs: the jobs "
                                    "go to the devices in turn; at least one job per device)")
    p.add_argument("--workers", type=int, help="data loading processes")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other recipe key, e.g. --set lr=3e-4 --set cutmix_p=0.5 (repeatable; --show-config lists them)")


def overrides_from(args: argparse.Namespace) -> dict:
    """Recipe keys given as flags and --set, None for the ones not given."""
    out = {key: getattr(args, key, None) for key in FLAG_KEYS}
    for pair in args.set:
        if "=" not in pair:
            raise ValueError(f"--set {pair!r}: expected KEY=VALUE")
        key, value = pair.split("=", 1)
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def jobs_and_devices(overrides: dict, jobs: int) -> tuple[int, list[str]]:
    """(the number of jobs, the devices they go to in turn) for ``--jobs`` and a ``--device`` list: at least
    one job per device. With several devices ``overrides["device"]`` becomes the first, for this process,
    which only spreads the jobs; each job gets its own."""
    from ..device import device_list
    devices = device_list(overrides["device"]) if overrides.get("device") else []
    if len(devices) > 1:
        overrides["device"] = devices[0]
    return max(jobs, len(devices)), devices


def task_of(args: argparse.Namespace):
    return load_task(args.task)
