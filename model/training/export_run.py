"""Export a run: freeze the finished folds of a run folder into a bundle (written by model.export), with the
run's decision rule, CV scores, prior and portable recipe in its manifest."""
from __future__ import annotations

import logging
from pathlib import Path

from ..bundle import WEIGHTS_DIR
from ..checkpoint import load_checkpoint
from ..errors import BundleError
from ..export import export_bundle
from .config import portable, read_config
from .results import read_run
from .run_folder import RunFolder
from .summary import summarise

log = logging.getLogger("train")
BACKUPS = Path(__file__).resolve().parents[2] / "runs" / "replaced-bundles"


def export(run_dir: str | Path, out: str | Path | None = None, folds: list[int] | None = None,
           force: bool = False, expect_task: str | None = None) -> Path:
    """Freeze the finished folds of a run (or the subset ``folds``) into a bundle (default
    model/weights/<task>/). The decision rule and CV scores always come from every finished fold's OOF."""
    run = RunFolder(run_dir)
    run_dir = run.root
    task, frame = read_run(run_dir)
    if expect_task and task.name != expect_task:
        raise ValueError(f"{run_dir} is a run of task {task.name!r}, not {expect_task!r}: "
                         f"export it with python train.py export {run_dir}")
    metrics = summarise(run_dir)
    chosen = metrics["folds_done"] if folds is None else folds
    unfinished = sorted(set(chosen) - set(metrics["folds_done"]))
    if unfinished:
        raise ValueError(f"{run_dir}: folds {unfinished} are not finished; finished: {metrics['folds_done']}")
    checkpoints = [load_checkpoint(run.fold(k).best) for k in chosen]
    cfg = read_config(run.config_file, task.kind)
    labels = task.kind.load_truth(run_dir, frame, task)
    recipe = {k: v for k, v in portable(cfg, task.kind).items() if k not in ("backbone", "img_size")}  # those live in network
    manifest = {
        "task": task.to_dict(),
        "decision": metrics["rule"],
        "prior": task.kind.prior(labels, len(task.heads)),
        "cv": {"metric": task.metric, "oof_score_default_rule": metrics["oof_default_rule"]["score"],
               "oof_score_tuned_rule": metrics["oof_tuned_rule"]["score"], "rule": metrics["rule_report"],
               "folds_done": metrics["folds_done"], "folds_missing": metrics["folds_missing"],
               "n_oof": metrics["n_oof"], "n_images": metrics["n_images"], "folds_in_bundle": sorted(chosen)},
        "trained_on": {"dataset": cfg.dataset, "images": int(len(frame)),
                       "license": cfg.data_license or "not given: see the data's licence"},
        "recipe": recipe,
    }
    target = Path(out) if out else WEIGHTS_DIR / task.name
    try:
        folder = export_bundle(target, checkpoints, manifest, replace=force, backups=BACKUPS)
    except BundleError as e:
        raise ValueError(str(e)) from None
    from ..onnx_backend import record_graph
    record_graph(folder)
    if metrics["folds_missing"]:
        log.warning("exported %d fold(s); folds %s are missing", len(checkpoints), metrics["folds_missing"])
    return folder
