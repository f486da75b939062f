"""Optuna studies over the training recipe: ``python -m train_cls tune --data DIR --trials N``.

* Objective: the task's competition score (model.metric), out-of-fold over ``--folds`` (default 0) with
  the neutral rule (argmax / 0.5), so trials compare on the model, not on a rule tuned to few images.
* Pruning: a median pruner. Folds train one after another; the step of fold position i, epoch e is
  i * max_epochs + e, and its value is the mean of the best scores of the folds already finished and
  the current fold's score at epoch e, so every trial reports comparable values at the same step.
* Storage: a SQLite file (default runs/tune/<study>.db), any SQLAlchemy URL (PostgreSQL for many
  machines), or ``journal:PATH`` (a journal file that several processes on one machine share). Trials of
  a killed process are marked failed by the heartbeat and retried in the same run folder, so their
  finished epochs are not redone.
* Each trial trains into RUN/trial-<n>/; the best trial is written as best_config.yaml, which
  ``python -m train_cls --config best_config.yaml`` trains as-is, with summary.json beside it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import warnings
from dataclasses import asdict
from pathlib import Path

import optuna
import torch
import yaml

from ..atomic import write_json, write_text
from ..data import DatasetError, dataset_name
from .config import RUNTIME_KEYS, TrainConfig, build_config, config_fields, selected_folds
from .folds import FoldsMismatchError
from .spec import TaskSpec

log = logging.getLogger("tune")
PROJECT = Path(__file__).resolve().parents[2]
TRIAL_ERRORS = (FloatingPointError, RuntimeError, torch.OutOfMemoryError, ValueError)


def load_space(path: str | Path) -> dict:
    space = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    for key, spec in space.items():
        if key not in config_fields():
            raise ValueError(f"{path}: unknown config key {key!r}; valid keys: {', '.join(config_fields())}")
        if not isinstance(spec, dict) or not ({"choices"} <= set(spec) or {"low", "high"} <= set(spec)):
            raise ValueError(f"{path}: {key} needs either choices: [...] or low: / high:")
    return space


def suggest(trial: optuna.Trial, space: dict, heads: tuple[str, ...]) -> dict:
    values = {}
    for key, spec in space.items():
        if "choices" in spec:
            values[key] = trial.suggest_categorical(key, spec["choices"])
        elif spec.get("per_feature"):
            values[key] = [trial.suggest_float(f"{key}.{h}", spec["low"], spec["high"], log=spec.get("log", False))
                           for h in heads]
        elif isinstance(spec["low"], int) and isinstance(spec["high"], int):
            values[key] = trial.suggest_int(key, spec["low"], spec["high"], log=spec.get("log", False))
        else:
            values[key] = trial.suggest_float(key, float(spec["low"]), float(spec["high"]), log=spec.get("log", False))
    return values


def open_storage(url: str):
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage
        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url, heartbeat_interval=60, grace_period=180,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2))


def make_objective(spec: TaskSpec, base: TrainConfig, space: dict, out: Path):
    from .experiment import train

    folds = selected_folds(base)

    def objective(trial: optuna.Trial) -> float:
        cfg = dataclasses.replace(base, **suggest(trial, space, spec.task.heads))
        # A retried trial (its process died) resumes in the folder of the trial it repeats.
        frozen = trial.study.get_trials(deepcopy=False)[trial.number]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            origin = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
        cfg.out = str(out / f"trial-{origin if origin is not None else trial.number}")
        trial.set_user_attr("run_dir", cfg.out)
        finished: list[float] = []

        def report(fold: int, epoch: int, score: float) -> None:
            position = folds.index(fold)
            if len(finished) < position:
                finished.append(best_of(cfg.out, folds[len(finished)]))
            value = (sum(finished[:position]) + score) / (position + 1)
            trial.report(value, position * cfg.epochs + epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at fold {fold}, epoch {epoch + 1}: {value:.4f}")

        try:
            metrics = train(spec, cfg, report=report)
        except TRIAL_ERRORS as e:
            trial.set_user_attr("fail_reason", f"{type(e).__name__}: {e}")
            raise
        trial.set_user_attr("oof_tuned_rule", metrics["oof_tuned_rule"]["score"])
        return metrics["oof_default_rule"]["score"]

    return objective


def best_of(run_dir: str, fold: int) -> float:
    return json.loads((Path(run_dir) / f"fold{fold}" / "done.json").read_text())["score"]


def best_config(base: TrainConfig, space: dict, trial: optuna.trial.FrozenTrial, heads) -> TrainConfig:
    params = dict(trial.params)
    values = {}
    for key, spec in space.items():
        values[key] = [params[f"{key}.{h}"] for h in heads] if spec.get("per_feature") else params[key]
    return dataclasses.replace(base, **values, out="", folds="all")


def summarise_study(study: optuna.Study, base: TrainConfig, space: dict, spec: TaskSpec, out: Path) -> dict:
    states = {s.name: len(study.get_trials(states=(s,))) for s in optuna.trial.TrialState}
    summary = {"study": study.study_name, "trials": {k: v for k, v in states.items() if v}}
    failed = [t for t in study.get_trials(states=(optuna.trial.TrialState.FAIL,))]
    summary["failures"] = {t.number: t.user_attrs.get("fail_reason", "see the log") for t in failed}
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    if complete:
        best = study.best_trial
        summary.update(best_value=best.value, best_trial=best.number, best_params=best.params,
                       best_oof_tuned_rule=best.user_attrs.get("oof_tuned_rule"))
        cfg = best_config(base, space, best, spec.task.heads)
        header = (f"# Best trial {best.number} of study {study.study_name}: OOF {spec.task.name} score "
                  f"{best.value:.4f} (argmax/0.5). Train it: python -m train_"
                  f"{'cls' if spec.task.name == 'cla' else 'fea'} --config {out / 'best_config.yaml'}\n")
        write_text(out / "best_config.yaml", header + yaml.safe_dump(
            {k: v for k, v in asdict(cfg).items() if k not in RUNTIME_KEYS - {"data"}}, sort_keys=False,
            allow_unicode=True))
        if len(complete) >= 3:
            try:
                summary["importance"] = optuna.importance.get_param_importances(study)
            except (RuntimeError, ValueError) as e:
                summary["importance"] = f"not computed: {e}"
    write_json(out / "summary.json", summary)
    return summary


def tune(spec: TaskSpec, base: TrainConfig, trials: int, timeout: float | None, storage: str | None,
         study_name: str | None, space_file: Path, out: Path | None = None, pinned: set[str] = frozenset()) -> dict:
    """Run ``trials`` trials of the study; keys in ``pinned`` (set on the command line) are not searched."""
    full_space = load_space(space_file)
    space = {k: v for k, v in full_space.items() if k not in pinned}
    if pinned & set(full_space):
        log.info("fixed on the command line, not searched: %s", ", ".join(sorted(pinned & set(full_space))))
    base.dataset = base.dataset or dataset_name(base.data, spec.task)
    study_name = study_name or f"{spec.task.name}-{base.dataset}"
    out = out or PROJECT / "runs" / "tune" / study_name
    out.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    study = optuna.create_study(
        study_name=study_name, storage=open_storage(storage), direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=base.seed + len(_existing_trials(storage, study_name))),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2))
    before = len(study.trials)
    study.optimize(make_objective(spec, base, space, out), n_trials=trials, timeout=timeout, catch=TRIAL_ERRORS)
    summary = summarise_study(study, base, space, spec, out)
    summary["new_trials"] = len(study.trials) - before
    summary["storage"] = storage
    write_json(out / "summary.json", summary)
    return summary


def _existing_trials(storage: str, name: str) -> list:
    try:
        return optuna.load_study(study_name=name, storage=open_storage(storage)).trials
    except KeyError:
        return []


def main(spec: TaskSpec, argv, prog: str) -> int:
    from .cli import FLAG_KEYS, parse_set
    package = "train_cls" if spec.task.name == "cla" else "train_fea"
    p = argparse.ArgumentParser(prog=f"{prog} tune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--trials", type=int, default=20, help="trials to run in this process (default 20)")
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    p.add_argument("--storage", help="sqlite:///FILE, postgresql://..., or journal:FILE (default: SQLite in the study folder)")
    p.add_argument("--study", help="study name (default <task>-<dataset>)")
    p.add_argument("--folds", default="0", help="folds each trial trains and is scored on (default 0)")
    p.add_argument("--space", type=Path, default=PROJECT / package / "search_space.yaml")
    p.add_argument("--out", type=Path, help="study folder (default runs/tune/<study>)")
    p.add_argument("--config", help="YAML of fixed settings under the search space")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    for key in ("epochs", "img_size", "backbone", "batch_size", "device", "workers"):
        p.add_argument(f"--{key.replace('_', '-')}", type=FLAG_KEYS[key])
    args = p.parse_args(argv)
    overrides = {k: getattr(args, k, None) for k in FLAG_KEYS if k not in ("out",)}
    overrides.update(parse_set(args.set))
    pinned = {k for k, v in overrides.items() if v is not None} - {"data", "folds"}
    try:
        base = build_config(spec.defaults, args.config, overrides)
        summary = tune(spec, base, args.trials, args.timeout, args.storage, args.study, args.space, args.out, pinned)
    except (DatasetError, FoldsMismatchError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=__import__("sys").stderr)
        return 2
    print(json.dumps({k: v for k, v in summary.items() if k != "importance"}, indent=2, default=str))
    if isinstance(summary.get("importance"), dict):
        print("importance: " + ", ".join(f"{k} {v:.2f}" for k, v in summary["importance"].items()))
    if not math.isnan(summary.get("best_value", float("nan"))):
        print(f"best config: {(args.out or PROJECT / 'runs' / 'tune' / summary['study']) / 'best_config.yaml'}")
    return 0
