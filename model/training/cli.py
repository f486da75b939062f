"""The training command line: train (default), export, tune. ``python train.py`` serves any task file;
``python -m train_cls`` and ``python -m train_fea`` are the same with a BI-RADS task file as the default."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from .. import kinds  # noqa: F401  (the entry point registers the task kinds)
from ..cli import guarded
from ..task import load_task
from .config import build_config, describe
from .options import add_task_flags, jobs_and_devices, overrides_from, task_of


def _train_parser(prog: str, default_task: Path | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter, description=(
        "Train a task's k-fold ensemble (finished folds are skipped, an interrupted fold resumes).\n\n"
        f"  {prog} {'[--task FILE]' if default_task else '--task FILE'} --data DIR [--config FILE.yaml] [flags]   train\n"
        f"  {prog} export RUN_DIR [--out DIR] [--folds 0,1] [--force]     freeze a run into model/weights/<task>/\n"
        f"  {prog} tune --task FILE --data DIR --trials N [...]           Optuna study (see {prog} tune --help)\n\n"
        "Settings come from the recipe defaults, the task file's train: section, --config, flags, then --set.\n"
        "Add --debug to any command to see a traceback instead of a one-line error."))
    add_task_flags(p, default_task)
    p.add_argument("--out", help="run folder (default runs/<task>-<dataset>)")
    p.add_argument("--jobs", type=int, default=1,
                   help="train this many folds side by side, each in its own process (to fill a GPU; default 1)")
    p.add_argument("--show-config", action="store_true", help="print every recipe key with its value and meaning, then exit")
    return p


def main(argv=None, default_task: Path | None = None, prog: str = "python train.py") -> int:
    return guarded(lambda args: _main(args, default_task, prog), argv)


def _main(argv: list[str], default_task: Path | None, prog: str) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if argv[:1] == ["export"]:
        return _export(argv[1:], default_task, prog)
    if argv[:1] == ["tune"]:
        from .tune import main as tune_main
        return tune_main(argv[1:], default_task, prog)
    parser = _train_parser(prog, default_task)
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    task = task_of(args)
    overrides = {**overrides_from(args), "out": args.out}
    jobs, devices = jobs_and_devices(overrides, args.jobs)
    cfg = build_config(task, args.config, overrides)
    if args.show_config:
        print(f"# recipe keys for {task.name} ({task.kind.name}); set any with --set KEY=VALUE\n" + describe(cfg, task.kind),
              end="")
        return 0
    from .experiment import train
    if jobs > 1:
        from .distributed import launched
        if launched():
            parser.error("--jobs runs its own processes; under torchrun, leave --jobs and the device list out")
        train_in_jobs(task, cfg, argv, jobs, devices)
    metrics = train(task, cfg)  # after --jobs every fold is done: this gathers them
    if metrics is None:         # a torchrun process other than rank 0: rank 0 reports
        return 0
    rule = metrics["rule_report"]
    neutral, kept = metrics["oof_default_rule"]["score"], metrics["oof_tuned_rule"]["score"]
    scores = (f"{neutral:.4f} with the neutral rule -> {kept:.4f} with the tuned rule, kept" if rule["adopted"]
              else f"{neutral:.4f} with the neutral rule, kept")
    print(f"OOF {task.name} {task.metric}: {scores} ({rule['why']}); folds {metrics['folds_done']}"
          + (f"; folds {metrics['folds_missing']} not finished" if metrics["folds_missing"] else ""))
    if "probe" in metrics and cfg.recipe == "finetune":
        verdict = "fine-tuning paid" if metrics["gain_over_probe"] > 0 else \
            f"FINE-TUNING DID NOT PAY: {task.kind.probe_advice(task, cfg)}"
        print(f"{task.kind.baseline_name} on the same folds: {metrics['probe']['oof_tuned_rule']:.4f} "
              f"({metrics['gain_over_probe']:+.4f} for this recipe: {verdict})")
    print(f"run folder: {cfg.out}")
    return 0


def train_in_jobs(task, cfg, argv: list[str], jobs: int, devices: list[str] = ()) -> None:
    """The selected folds in ``jobs`` processes into one run folder; prints folds per hour. Each job gets
    an equal share of the cores (threads and, with workers -1, loader processes), and with ``devices``
    its own device in turn."""
    from ..readers import locate_dataset
    from .config import selected_folds
    from .experiment import open_run
    from .parallel import pin_devices, run_jobs, split, strip_option, workers_per_job
    cfg = dataclasses.replace(cfg)
    cfg.dataset = cfg.dataset or locate_dataset(task, cfg.data)[0].name
    run_dir, _ = open_run(task, cfg)
    shares = split(selected_folds(cfg), jobs)
    workers = workers_per_job(cfg.workers, len(shares))
    base = ["--task", str(task.source), *strip_option(strip_option(argv, "--jobs"), "--device")]
    argvs = [[*base, "--out", str(run_dir), "--folds", ",".join(map(str, share)), "--set", f"workers={workers}"]
             for share in shares]
    seconds = run_jobs(pin_devices(argvs, list(devices) or [cfg.device]))
    folds = sum(len(share) for share in shares)
    where = f" on {', '.join(dict.fromkeys(devices))}" if devices else ""
    print(f"{folds} folds in {len(shares)} jobs{where}: {seconds / 60:.1f} min, {3600 * folds / seconds:.1f} folds per hour")


def _export(argv: list[str], default_task: Path | None, prog: str) -> int:
    p = argparse.ArgumentParser(prog=f"{prog} export", description="Freeze a run's finished folds into a bundle.")
    p.add_argument("run_dir", help="the run folder training wrote (runs/<task>-<dataset>)")
    p.add_argument("--out", help="bundle folder (default model/weights/<task>/)")
    p.add_argument("--folds", help="only these finished folds, e.g. 0,1 (a smaller, faster bundle; default all)")
    p.add_argument("--force", action="store_true",
                   help="replace a bundle already in the bundle folder (it is moved to runs/replaced-bundles/)")
    args = p.parse_args(argv)
    try:
        folds = [int(f) for f in args.folds.split(",")] if args.folds else None
    except ValueError:
        p.error(f"--folds {args.folds!r}: expected fold numbers such as 0,1")
    from .export_run import export
    expect = load_task(default_task).name if default_task else None
    folder = export(args.run_dir, args.out, folds, force=args.force, expect_task=expect)
    print(f"exported the bundle to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
