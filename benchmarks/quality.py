"""Recipe quality: the linear probe and the default recipe side by side, out-of-fold on the same folds.

    python benchmarks/quality.py                                   # BrEaST cla and fea, then BUSI
    python benchmarks/quality.py --datasets lgg                    # LGG segmentation: U-Net vs the pixel probe
    python benchmarks/quality.py --datasets bccd                   # BCCD detection: FCOS vs its frozen encoder
    python benchmarks/quality.py --datasets busi --recipes probe   # one dataset, one recipe
    python benchmarks/quality.py --datasets breast --set head_init=probe --set backbone_lr=0.3   # a variant
    python benchmarks/quality.py --datasets breast --export model/weights --bundle-folds cla=0,1,2 fea=0,1

For every dataset and recipe it trains all folds (resuming a run folder under --out) and prints the OOF
score with the neutral rule and with the rule kept, the per-fold mean, spread and range, the time and the
device. BrEaST's overall is the mean of cla and fea, as in the competition. With --export the default
recipe's BrEaST runs are frozen into bundles (--bundle-folds keeps a subset of folds, to fit a size
budget) and scored on the labelled testA, which no training or tuning ever sees.

These are small sets (150 and 780 images): read differences of a few hundredths as noise.

LGG (24 patients, 781 slices, 5 patient-grouped folds) is a segmentation task: its baseline, the pixel-wise
linear probe on the frozen encoder, runs inside every segmentation run on the same folds, so one run prints
both: Dice per volume (the task's metric) and per image, IoU, pixel sensitivity and specificity. On a CPU it
trains at 160 px for 10 epochs to finish within an hour on 2 cores; on a GPU, the task's full recipe (256 px,
20 epochs). Its scores are taken at the network's input size (the true masks resized with nearest
neighbour); run.py writes masks at each image's own size.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

import model.kinds  # noqa: E402,F401  (registers the task kinds)
from model.task import load_task  # noqa: E402
from model.training.config import build_config  # noqa: E402
from model.training.experiment import train  # noqa: E402
from model.training.export_run import export  # noqa: E402

DATA = PROJECT.parent / "shared" / "data"
BREAST_LICENSE = ("BrEaST-Lesions_USG, Pawłowska et al., Scientific Data 11, 148 (2024), "
                  "doi:10.1038/s41597-024-02984-z, CC BY 4.0")
DATASETS = {  # name -> [(task file, data folder, licence)]
    "breast": [(PROJECT / "tasks/birads-cla.yaml", DATA / "breast-lesions-usg", BREAST_LICENSE),
               (PROJECT / "tasks/birads-fea.yaml", DATA / "breast-lesions-usg", BREAST_LICENSE)],
    "busi": [(PROJECT / "tasks/examples/busi.yaml", DATA / "busi", None)],
    "lgg": [(PROJECT / "tasks/examples/lgg.yaml", DATA / "lgg-mri", None)],
    "bccd": [(PROJECT / "tasks/examples/bccd.yaml", DATA / "bccd", None)],
}
# What a dataset trains with on a CPU, where the task's own recipe would take hours; a GPU trains the recipe.
# BCCD: FCOS on lite0 trains at about 0.43 s per image at 320 px on the 2-core CPU (fp32): three folds of eight
# epochs and the frozen-encoder baseline's one, about 100 s per epoch alone (81 min measured while the test suite
# shared the cores).
CPU_SETTINGS = {"lgg": {"img_size": 160, "epochs": 10}, "bccd": {"img_size": 320, "epochs": 8, "n_folds": 3}}
SEGMENTATION_SCORES = ("dice", "dice_per_image", "iou", "sensitivity", "specificity")
RECIPES = {"probe": {"recipe": "probe"}, "default": {}}


def parse_sets(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        out[key.strip()] = value.strip()
    return out


def run_one(task_file: Path, data: Path, license_text: str | None, recipe: str, args, settings: dict) -> dict:
    task = load_task(task_file)
    overrides = {**RECIPES[recipe], **settings, **(parse_sets(args.set) if recipe == "default" else {}),
                 "data": str(data), "out": str(args.out / f"{task.name}-{recipe}{args.tag}"), "workers": args.workers,
                 "epochs": args.epochs or settings.get("epochs") if recipe == "default" else None,
                 "data_license": license_text}
    cfg = build_config(task, overrides=overrides)
    started = time.perf_counter()
    metrics = train(task, cfg)
    folds = [f["score"] for f in metrics["per_fold"]]
    return {"task": task, "recipe": recipe, "cfg": cfg, "metrics": metrics, "minutes": (time.perf_counter() - started) / 60,
            "folds": folds, "device": metrics["per_fold"][0].get("precision", "?")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="breast,busi", help="comma list of " + ", ".join(DATASETS))
    p.add_argument("--recipes", default="probe,default", help="comma list of " + ", ".join(RECIPES))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe keys for the default recipe")
    p.add_argument("--epochs", type=int, help="epochs of the default recipe (default: its own)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--out", type=Path, default=PROJECT / "runs" / "quality")
    p.add_argument("--tag", default="", help="suffix of the run folders, to keep variants apart")
    p.add_argument("--export", type=Path, help="export the default recipe's BrEaST bundles here and score testA")
    p.add_argument("--bundle-folds", nargs="*", default=[], metavar="TASK=FOLDS",
                   help="with --export: the folds each bundle keeps, e.g. cla=0,1,2 fea=0,1")
    args = p.parse_args()
    import torch
    device = "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    results = []
    for name in args.datasets.split(","):
        if name not in DATASETS:
            p.error(f"--datasets: {name!r} is not one of {', '.join(DATASETS)}")
        settings = CPU_SETTINGS.get(name, {}) if not torch.cuda.is_available() else {}
        for task_file, data, license_text in DATASETS[name]:
            if not data.is_dir():
                print(f"{data}: not found, {name} skipped", file=sys.stderr)
                continue
            kind = load_task(task_file).kind.name
            # A segmentation or detection run trains its own baseline beside it, on the same folds.
            for recipe in ["default"] if kind in REPORTS else args.recipes.split(","):
                results.append(run_one(task_file, data, license_text, recipe, args, settings))
                r = results[-1]
                print(f"  done: {r['task'].name} {recipe} in {r['minutes']:.1f} min", flush=True)
                if kind in REPORTS:
                    REPORTS[kind](r)
    print(f"\n{'task':<6} {'recipe':<8} {'OOF neutral':>11} {'OOF rule':>9} {'folds mean ± sd [min, max]':>30} "
          f"{'minutes':>8}  device {device}")
    for r in results:
        m, folds = r["metrics"], r["folds"]
        spread = f"{statistics.mean(folds):.3f} ± {statistics.pstdev(folds):.3f} [{min(folds):.3f}, {max(folds):.3f}]"
        print(f"{r['task'].name:<6} {r['recipe']:<8} {m['oof_default_rule']['score']:>11.4f} "
              f"{m['oof_tuned_rule']['score']:>9.4f} {spread:>30} {r['minutes']:>8.1f}")
    by = {(r["task"].name, r["recipe"]): r["metrics"]["oof_tuned_rule"]["score"] for r in results}
    for recipe in args.recipes.split(","):
        if ("cla", recipe) in by and ("fea", recipe) in by:
            print(f"BrEaST overall, {recipe}: {(by['cla', recipe] + by['fea', recipe]) / 2:.4f}")
    if args.export:
        export_and_score(args, [r for r in results if r["recipe"] == "default" and r["task"].name in ("cla", "fea")])
    return 0


def print_segmentation(r: dict) -> None:
    """The recipe's and the baseline's OOF scores side by side, per fold, with the settings used."""
    from model.device import resolve_device
    m, cfg = r["metrics"], r["cfg"]
    print(f"\n== {r['task'].name}: {m['n_images']} images, {len(m['per_fold'])} "
          f"folds grouped by patient; {cfg.architecture} on {cfg.backbone} at {cfg.img_size} px, {cfg.epochs} epochs, "
          f"batch {cfg.batch_size}, lr {cfg.lr}, input_norm {cfg.input_norm}, gray_p {cfg.gray_p}; "
          f"{r['minutes']:.1f} min on {resolve_device(cfg.device)} "
          f"({r['device']} autocast)")
    tuned, neutral = m["oof_tuned_rule"], m["oof_default_rule"]
    print(f"{'':<32}" + "".join(f"{k.replace('_', ' '):>16}" for k in SEGMENTATION_SCORES))
    print(f"{'U-Net, rule kept':<32}" + "".join(f"{tuned[k]:>16.4f}" for k in SEGMENTATION_SCORES))
    print(f"{'U-Net, neutral rule':<32}" + "".join(f"{neutral[k]:>16.4f}" for k in SEGMENTATION_SCORES))
    if "probe" in m:
        print(f"{'baseline (pixel probe), rule':<32}{m['probe']['oof_tuned_rule']:>16.4f}   "
              f"(neutral rule {m['probe']['oof_default_rule']:.4f}); gain of the U-Net {m['gain_over_probe']:+.4f}")
    print_folds_and_rule(r)
    volumes = sorted(tuned.get("per_volume_dice", {}).items(), key=lambda item: item[1])
    if volumes:
        print("weakest volumes (dice, rule kept): " + ", ".join(f"{name} {dice:.3f}" for name, dice in volumes[:4]))
    d = tuned.get("detection", {})
    if d:
        print(f"has a lesion, per image: sensitivity {d['sensitivity']:.3f}, specificity {d['specificity']:.3f}, "
              f"AUC {d['auc']:.3f} ({d['images_with_lesion']} of {m['n_images']} images show one)")


def print_detection(r: dict) -> None:
    """The detector's and its frozen-encoder baseline's OOF scores side by side, per class and per fold."""
    from model.device import resolve_device
    m, cfg = r["metrics"], r["cfg"]
    print(f"\n== {r['task'].name}: {m['n_images']} images, {len(m['per_fold'])} folds; {cfg.architecture} on "
          f"{cfg.backbone} at {cfg.img_size} px, {cfg.epochs} epochs, batch {cfg.batch_size}, lr {cfg.lr}, "
          f"{r['minutes']:.1f} min on {resolve_device(cfg.device)} ({r['device']})")
    scores = m["oof_tuned_rule"]
    print(f"OOF mAP@0.5:0.95 {scores['map']:.4f}, mAP@0.5 {scores['map50']:.4f}, recall (AR@100) {scores['recall']:.4f}, "
          f"per-image F1 {scores['f1']:.4f}")
    for name in r["task"].heads:
        print(f"  {name:<12} AP {scores['ap'][name]:.4f}  AP50 {scores['ap50'][name]:.4f}")
    if "probe" in m:
        print(f"baseline ({r['task'].kind.baseline_name}), {r['task'].metric}: {m['probe']['oof_tuned_rule']:.4f}; "
              f"gain of the recipe {m['gain_over_probe']:+.4f}")
    print_folds_and_rule(r)


def print_folds_and_rule(r: dict) -> None:
    m, folds = r["metrics"], r["folds"]
    print(f"per fold ({r['task'].metric}, neutral rule): " + ", ".join(f"{v:.3f}" for v in folds) +
          f"; mean {statistics.mean(folds):.3f} ± {statistics.pstdev(folds):.3f}")
    print(f"rule: {m['rule']} ({m['rule_report']['why']})")


REPORTS = {"segmentation": print_segmentation, "detection": print_detection}


def export_and_score(args, runs) -> None:
    import run
    from model.score import format_report, score_folder
    folds = dict(pair.split("=") for pair in args.bundle_folds)
    for r in runs:
        chosen = [int(f) for f in folds[r["task"].name].split(",")] if r["task"].name in folds else None
        export(r["cfg"].out, args.export / r["task"].name, chosen, force=True)
    size = sum(f.stat().st_size for f in args.export.rglob("*.pt")) / 2**20
    testA = DATA / "breast-lesions-usg" / "testA"
    with tempfile.TemporaryDirectory() as tmp:
        run.main(["--weights", str(args.export), "--test-dir", str(testA), "--out-dir", tmp, "--quiet"])
        print(f"\n== bundles in {args.export} ({size:.1f} MB of weights) on testA (held out, never trained or tuned on)")
        print(format_report(score_folder(tmp, testA, [r["task"] for r in runs])))


if __name__ == "__main__":
    sys.exit(main())
