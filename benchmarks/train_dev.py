"""Train the default recipe on the dev data and print the figures the closing notes quote.

    python benchmarks/train_dev.py --task cla            # or fea, or both
    python benchmarks/train_dev.py --task both --export model/weights   # also freeze + score on testA

Prints per fold: best epoch, validation score, seconds per epoch; overall: OOF score with argmax/0.5
and with the tuned decision rule. With --export, the bundle is written there, run.py predicts the
labelled testA and the competition score is printed.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

DEV = PROJECT.parent / "shared" / "data" / "breast-lesions-usg"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=("cla", "fea", "both"), default="both")
    p.add_argument("--data", type=Path, default=DEV)
    p.add_argument("--out", type=Path, default=PROJECT / "runs" / "bench")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs (for a quicker look)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--export", type=Path, help="weights folder to export the bundles into, then score testA")
    args = p.parse_args()
    if not args.data.is_dir():
        print(f"{args.data}: dev data not found", file=sys.stderr)
        return 2
    from model.training.experiment import export, train
    from train_cls.recipe import SPEC as CLA_SPEC
    from train_fea.recipe import SPEC as FEA_SPEC
    specs = {"cla": [CLA_SPEC], "fea": [FEA_SPEC], "both": [CLA_SPEC, FEA_SPEC]}[args.task]
    for spec in specs:
        cfg = dataclasses.replace(spec.defaults, data=str(args.data), out=str(args.out / spec.task.name),
                                  workers=args.workers, **({"epochs": args.epochs} if args.epochs else {}))
        started = time.perf_counter()
        metrics = train(spec, cfg)
        minutes = (time.perf_counter() - started) / 60
        print(f"\n== {spec.task.name}: {cfg.backbone} {cfg.img_size}px, {cfg.epochs} epochs max, "
              f"{cfg.n_folds} folds, {metrics['n_oof']} images, {minutes:.1f} min")
        for f in metrics["per_fold"]:
            print(f"fold {f['fold']}: best epoch {f['best_epoch'] + 1}/{f['epochs_run']}, val score {f['score']:.4f}, "
                  f"{f['seconds_per_epoch']:.1f} s/epoch ({f['precision']})")
        print(f"OOF {spec.task.name} score: {metrics['oof_default_rule']['score']:.4f} with argmax/0.5, "
              f"{metrics['oof_tuned_rule']['score']:.4f} with the tuned rule {metrics['rule']}")
        if spec.task.multilabel:
            for name in spec.task.heads:
                a, b = metrics["oof_default_rule"]["features"][name], metrics["oof_tuned_rule"]["features"][name]
                print(f"  {name:<14} {a['score']:.4f} at 0.5 -> {b['score']:.4f} tuned")
        if args.export:
            export(spec, args.out / spec.task.name, args.export / spec.task.name)
    if args.export and (DEV / "testA").is_dir():
        import run
        from model.score import format_report, score_folder
        with tempfile.TemporaryDirectory() as tmp:
            run.main(["--weights", str(args.export), "--test-dir", str(DEV / "testA"), "--out-dir", tmp,
                      "--tasks", ",".join(s.task.name for s in specs), "--quiet"])
            print("\n== testA (held out, never used for training or tuning)")
            print(format_report(score_folder(tmp, DEV / "testA")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
