"""The command line both task packages share: train (default), export, tune."""
from __future__ import annotations

import argparse
import logging
import sys

from ..data import DatasetError
from .config import build_config, to_yaml
from .folds import FoldsMismatchError
from .spec import TaskSpec

FLAG_KEYS = {"data": str, "out": str, "folds": str, "epochs": int, "img_size": int, "backbone": str,
             "batch_size": int, "device": str, "workers": int}


def _train_parser(spec: TaskSpec, prog: str) -> argparse.ArgumentParser:
    name = spec.task.name
    p = argparse.ArgumentParser(prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter, description=(
        f"Train the {name} k-fold ensemble (finished folds are skipped, an interrupted fold resumes).\n\n"
        f"  {prog} --data DIR [--config FILE.yaml] [flags]   train\n"
        f"  {prog} export RUN_DIR [--out DIR]                 freeze a run into model/weights/{name}/\n"
        f"  {prog} tune --data DIR --trials N [...]           Optuna study (see {prog} tune --help)\n\n"
        "Settings come from the task's defaults, then --config, then flags, then --set key=value."))
    p.add_argument("--config", help="YAML file of config keys (e.g. an exported best trial)")
    p.add_argument("--data", help="folder with the official training layout (or its train/ folder)")
    p.add_argument("--out", help=f"run folder (default runs/{name}-<dataset>)")
    p.add_argument("--folds", help="folds to train in this process, e.g. 0,2 (default all)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--img-size", type=int)
    p.add_argument("--backbone", help="any timm model name (default tf_efficientnet_lite0)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--device", help="auto, cpu or cuda")
    p.add_argument("--workers", type=int, help="data loading processes")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other config key, e.g. --set lr=3e-4 --set cutmix_p=0.5 (repeatable)")
    p.add_argument("--show-config", action="store_true", help="print the resolved config and exit")
    return p


def parse_set(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--set {pair!r}: expected KEY=VALUE")
        key, value = pair.split("=", 1)
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def main(spec: TaskSpec, argv=None, prog: str | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = prog or f"python -m train_{'cls' if spec.task.name == 'cla' else 'fea'}"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        if argv[:1] == ["export"]:
            return _export(spec, argv[1:], prog)
        if argv[:1] == ["tune"]:
            from .tune import main as tune_main
            return tune_main(spec, argv[1:], prog)
        args = _train_parser(spec, prog).parse_args(argv)
        overrides = {k: getattr(args, k) for k in FLAG_KEYS}
        overrides.update(parse_set(args.set))
        cfg = build_config(spec.defaults, args.config, overrides)
        if args.show_config:
            print(to_yaml(cfg), end="")
            return 0
        from .experiment import train
        metrics = train(spec, cfg)
    except (DatasetError, FoldsMismatchError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"OOF {spec.task.name} score {metrics['oof_default_rule']['score']:.4f} (argmax/0.5) -> "
          f"{metrics['oof_tuned_rule']['score']:.4f} (tuned rule) over folds {metrics['folds_done']}"
          + (f"; folds {metrics['folds_missing']} not finished" if metrics["folds_missing"] else "")
          + f"\nrun folder: {cfg.out}")
    return 0


def _export(spec: TaskSpec, argv, prog) -> int:
    p = argparse.ArgumentParser(prog=f"{prog} export", description="Freeze a run's finished folds into a bundle.")
    p.add_argument("run_dir")
    p.add_argument("--out", help=f"bundle folder (default model/weights/{spec.task.name}/)")
    p.add_argument("--folds", help="only these finished folds, e.g. 0,1 (a smaller, faster bundle; default all)")
    args = p.parse_args(argv)
    from .experiment import export
    folds = [int(f) for f in args.folds.split(",")] if args.folds else None
    folder = export(spec, args.run_dir, args.out, folds)
    print(f"exported {spec.task.name} bundle to {folder}")
    return 0
