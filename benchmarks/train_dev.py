"""Train the default recipe on the dev data and print the figures the closing notes quote.

    python benchmarks/train_dev.py --task cla            # or fea, or both
    python benchmarks/train_dev.py --task both --export model/weights   # also freeze + score on testA

Prints per fold: best epoch, validation score, seconds per epoch; overall: OOF score with argmax/0.5
and with the tuned decision rule. With --export, the bundle is written there, run.py predicts the
labelled testA and the competition score is printed.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

DEV = PROJECT.parent / "shared" / "data" / "breast-lesions-usg"
LICENSE = ("BrEaST-Lesions_USG, Pawłowska et al., Scientific Data 11, 148 (2024), "
           "doi:10.1038/s41597-024-02984-z, CC BY 4.0")


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
    from model.task import load_task
    from model.training.config import build_config
    from model.training.experiment import export, train
    tasks = [load_task(PROJECT / "tasks" / f"birads-{name}.yaml") for name in
             {"cla": ["cla"], "fea": ["fea"], "both": ["cla", "fea"]}[args.task]]
    for task in tasks:
        cfg = build_config(task, overrides={"data": str(args.data), "out": str(args.out / task.name),
                                            "workers": args.workers, "epochs": args.epochs, "data_license": LICENSE})
        started = time.perf_counter()
        metrics = train(task, cfg)
        minutes = (time.perf_counter() - started) / 60
        print(f"\n== {task.name}: {cfg.backbone} {cfg.img_size}px, {cfg.epochs} epochs max, "
              f"{cfg.n_folds} folds, {metrics['n_oof']} images, {minutes:.1f} min")
        for f in metrics["per_fold"]:
            print(f"fold {f['fold']}: epoch {f['selected_epoch']}/{f['epochs_run']}, val score {f['score']:.4f}, "
                  f"{f['seconds_per_epoch']:.1f} s/epoch ({f['precision']})")
        print(f"OOF {task.name} score: {metrics['oof_default_rule']['score']:.4f} with the neutral rule, "
              f"{metrics['oof_tuned_rule']['score']:.4f} with the rule kept ({metrics['rule_report']['why']})")
        for name, part in metrics["oof_default_rule"].get("labels", {}).items():
            print(f"  {name:<14} {part['score']:.4f} at 0.5 -> {metrics['oof_tuned_rule']['labels'][name]['score']:.4f}")
        if args.export:
            export(args.out / task.name, args.export / task.name, force=True)
    if args.export and (DEV / "testA").is_dir():
        import run
        from model.score import format_report, score_folder
        with tempfile.TemporaryDirectory() as tmp:
            run.main(["--weights", str(args.export), "--test-dir", str(DEV / "testA"), "--out-dir", tmp,
                      "--tasks", ",".join(t.name for t in tasks), "--quiet"])
            print("\n== testA (held out, never used for training or tuning)")
            print(format_report(score_folder(tmp, DEV / "testA", tasks)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
