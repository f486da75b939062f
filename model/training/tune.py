"""Optuna studies over the training recipe: ``python train.py tune --task FILE --data DIR --trials N``.

* Objective: the task's metric, out-of-fold over ``--folds`` (default 0) with the neutral decision rule,
  so trials compare on the model, not on a rule tuned to few images.
* Pruning: a median pruner. Folds train one after another; the step of fold position i, epoch e (from 1)
  is i * max_epochs + e, and its value is the mean of the best scores of the folds already finished and
  the current fold's score at epoch e, so every trial reports comparable values at the same step.
* Storage: a SQLite file (default runs/tune/<study>/study.db), any SQLAlchemy URL (PostgreSQL for many
  machines), or ``journal:PATH`` (a journal file: no server, only a file system every worker can lock, a
  local disk or NFS with working locks). Trials of
  a killed process are marked failed by the heartbeat and retried in the same run folder, so their
  finished epochs are not redone.
* Workers: each process that joins a study (``--jobs``, or a worker per machine) samples with TPE's
  constant liar, as Optuna advises for parallel workers (a running trial counts as a bad one, so the others
  look elsewhere), and from a seed of its own: ``--jobs`` numbers its processes, so a study on one machine
  repeats itself; a worker started on its own mixes in a random nonce, since workers that start together
  see the same study and would otherwise propose the same trials. Each trial records its worker's seed
  (``sampler_seed``, ``worker``).
* Each trial trains into <study folder>/trial-<n>/; the best trial is written as best_config.yaml, which
  trains as-is, with summary.json beside it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import socket
import time
import warnings
from pathlib import Path

import optuna
import torch
import yaml

from ..atomic import write_json, write_text
from ..readers import locate_dataset
from .config import RUNTIME_KEYS, TrainConfig, applicable, build_config, check_key, read_config, selected_folds
from .options import PROJECT, add_task_flags, jobs_and_devices, overrides_from, task_of
from .run_folder import RunFolder

log = logging.getLogger("tune")
SPACES = Path(__file__).resolve().parent / "search_spaces"
TRIAL_ERRORS = (FloatingPointError, RuntimeError, torch.OutOfMemoryError, ValueError)


def load_space(path: str | Path, kind) -> dict:
    try:
        space = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: cannot read the search space ({e})") from e
    for key, spec in space.items():
        try:
            check_key(key, kind)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        if not isinstance(spec, dict) or not ({"choices"} <= set(spec) or {"low", "high"} <= set(spec)):
            raise ValueError(f"{path}: {key} needs either choices: [...] or low: / high:")
    return space


def suggest(trial: optuna.Trial, space: dict, heads: tuple[str, ...]) -> dict:
    values = {}
    for key, spec in space.items():
        if "choices" in spec:
            values[key] = trial.suggest_categorical(key, spec["choices"])
        elif spec.get("per_label"):
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
    import sqlalchemy.exc
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, heartbeat_interval=60, grace_period=180,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2))
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            # Workers that start together on a new database race to create Optuna's tables; the loser finds
            # them made by the winner on its next try.
            if attempt == 4:
                raise
            time.sleep(0.5 * (attempt + 1))


def worker_study(storage: str, study_name: str, seed: int, job: int | None) -> tuple[optuna.Study, dict]:
    """The study as this worker sees it, with its own sampler, and what seeded it (recorded in each trial).

    ``job``: the process's number under ``--jobs`` (its seed follows from the study's), or None for a worker
    started on its own, whose seed takes a random nonce: two such workers that start together see the same
    trials, and a seed made of those alone would make them propose the same parameters."""
    base = seed + len(_existing_trials(storage, study_name))
    seed = base + 7919 * job if job is not None else (base * 1_000_003 + int.from_bytes(os.urandom(4), "little")) % 2**32
    sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    study = optuna.create_study(study_name=study_name, storage=open_storage(storage), direction="maximize",
                                load_if_exists=True, sampler=sampler,
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2))
    return study, {"sampler_seed": seed, "worker": f"{socket.gethostname()}:{os.getpid()}"}


def make_objective(task, base: TrainConfig, space: dict, out: Path, worker: dict | None = None):
    from .experiment import train

    folds = selected_folds(base)

    def objective(trial: optuna.Trial) -> float:
        cfg = dataclasses.replace(base, **suggest(trial, space, task.heads))
        # A retried trial (its process died) resumes in the folder of the trial it repeats.
        frozen = trial.study.get_trials(deepcopy=False)[trial.number]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            origin = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
        cfg.out = str(out / f"trial-{origin if origin is not None else trial.number}")
        trial.set_user_attr("run_dir", cfg.out)
        for key, value in (worker or {}).items():
            trial.set_user_attr(key, value)
        finished: list[float] = []

        def report(fold: int, epoch: int, score: float) -> None:
            position = folds.index(fold)
            if len(finished) < position:
                finished.append(best_of(cfg.out, folds[len(finished)]))
            value = (sum(finished[:position]) + score) / (position + 1)
            trial.report(value, position * cfg.epochs + epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at fold {fold}, epoch {epoch}: {value:.4f}")

        try:
            metrics = train(task, cfg, report=report)
        except TRIAL_ERRORS as e:
            trial.set_user_attr("fail_reason", f"{type(e).__name__}: {e}")
            raise
        trial.set_user_attr("oof_tuned_rule", metrics["oof_tuned_rule"]["score"])
        return metrics["oof_default_rule"]["score"]

    return objective


def best_of(run_dir: str, fold: int) -> float:
    return RunFolder(run_dir).fold(fold).read_done()["score"]


def best_config(base: TrainConfig, space: dict, trial: optuna.trial.FrozenTrial, task) -> TrainConfig:
    """The best trial's recipe. A key the space searches but the trial did not (a study resumed after the
    space grew) takes the value the trial's run used: its config.yaml, or the default from before the key."""
    params = dict(trial.params)
    values, ran = {}, None
    for key, spec in space.items():
        names = [f"{key}.{h}" for h in task.heads] if spec.get("per_label") else [key]
        if all(name in params for name in names):
            values[key] = [params[name] for name in names] if spec.get("per_label") else params[key]
            continue
        if ran is None:
            saved = RunFolder(trial.user_attrs.get("run_dir", "")).config_file
            ran = read_config(saved, task.kind) if saved.is_file() else TrainConfig()
        values[key] = getattr(ran, key)
    return dataclasses.replace(base, **values, out="", folds="all")


def summarise_study(study: optuna.Study, task, base: TrainConfig, space: dict, out: Path) -> dict:
    states = {s.name: len(study.get_trials(states=(s,))) for s in optuna.trial.TrialState}
    summary = {"study": study.study_name, "trials": {k: v for k, v in states.items() if v}}
    failed = study.get_trials(states=(optuna.trial.TrialState.FAIL,))
    summary["failures"] = {t.number: t.user_attrs.get("fail_reason", "see the log") for t in failed}
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    if complete:
        best = study.best_trial
        summary.update(best_value=best.value, best_trial=best.number, best_params=best.params,
                       best_oof_tuned_rule=best.user_attrs.get("oof_tuned_rule"))
        cfg = best_config(base, space, best, task)
        header = (f"# Best trial {best.number} of study {study.study_name}: OOF {task.name} {task.metric} "
                  f"{best.value:.4f} (neutral rule). Train it on every fold:\n"
                  f"#   python train.py --task {task.source} --config {out / 'best_config.yaml'} "
                  f"--out {out / 'best'}\n")
        write_text(out / "best_config.yaml", header + yaml.safe_dump(
            {k: v for k, v in applicable(cfg, task.kind).items() if k not in RUNTIME_KEYS - {"data"}},
            sort_keys=False, allow_unicode=True))
        if len(complete) >= 3:
            try:
                summary["importance"] = optuna.importance.get_param_importances(study)
            except (RuntimeError, ValueError) as e:
                summary["importance"] = f"not computed: {e}"
    write_json(out / "summary.json", summary)
    return summary


def study_folder(task, base: TrainConfig, study_name: str | None, out: Path | None) -> tuple[str, Path]:
    """(study name, study folder): default <task>-<dataset> under runs/tune/."""
    base.dataset = base.dataset or locate_dataset(task, base.data)[0].name
    study_name = study_name or f"{task.name}-{base.dataset}"
    return study_name, out or PROJECT / "runs" / "tune" / study_name


def search_space(space_file: Path, kind, pinned: set[str]) -> dict:
    """The search space less the keys set on the command line."""
    full_space = load_space(space_file, kind)
    if pinned & set(full_space):
        log.info("fixed on the command line, not searched: %s", ", ".join(sorted(pinned & set(full_space))))
    return {k: v for k, v in full_space.items() if k not in pinned}


def tune(task, base: TrainConfig, trials: int, timeout: float | None, storage: str | None,
         study_name: str | None, space_file: Path, out: Path | None = None, pinned: set[str] = frozenset(),
         job: int | None = None) -> dict:
    """Run ``trials`` trials of the study; keys in ``pinned`` (set on the command line) are not searched.
    ``job`` numbers the processes that ``--jobs`` starts on one study; None for a worker on its own
    (``worker_study`` says how each seeds its sampler)."""
    space = search_space(space_file, task.kind, pinned)
    study_name, out = study_folder(task, base, study_name, out)
    out.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    study, worker = worker_study(storage, study_name, base.seed, job)
    before, started = len(study.trials), time.perf_counter()
    study.optimize(make_objective(task, base, space, out, worker), n_trials=trials, timeout=timeout,
                   catch=TRIAL_ERRORS)
    return _finish(study, task, base, space, out, storage, before, time.perf_counter() - started)


def tune_in_jobs(task, base: TrainConfig, args: argparse.Namespace, argv: list[str], pinned: set[str],
                 devices: list[str] = ()) -> dict:
    """``args.trials`` trials in ``args.jobs`` processes on one study (a journal file by default), each
    with its share of the trials and of the cores, and with ``devices`` its own device in turn; then the
    study's summary with trials per hour."""
    from .parallel import pin_devices, run_jobs, split, strip_option, workers_per_job
    space = search_space(args.space or SPACES / f"{task.kind.name}.yaml", task.kind, pinned)
    study_name, out = study_folder(task, base, args.study, args.out)
    out.mkdir(parents=True, exist_ok=True)
    storage = args.storage or f"journal:{(out / 'study.journal').resolve()}"
    if storage.startswith("sqlite:"):
        log.warning("several processes on one SQLite file can fail with 'database is locked'; "
                    "journal:FILE (the default with --jobs) is safer")
    shares = [len(share) for share in split(list(range(args.trials)), args.jobs)]
    workers = workers_per_job(base.workers, len(shares))
    rest = argv
    for option in ("--jobs", "--trials", "--storage", "--study", "--out", "--device"):
        rest = strip_option(rest, option)
    before = len(_existing_trials(storage, study_name))
    seconds = run_jobs(pin_devices([["tune", "--task", str(task.source), *rest, "--trials", str(n), "--storage", storage,
                                     "--study", study_name, "--out", str(out), "--job-index", str(k),
                                     "--set", f"workers={workers}"] for k, n in enumerate(shares)],
                                   list(devices) or [base.device]))
    study = optuna.load_study(study_name=study_name, storage=open_storage(storage))
    return _finish(study, task, base, space, out, storage, before, seconds)


def _finish(study, task, base, space, out, storage, before: int, seconds: float) -> dict:
    summary = summarise_study(study, task, base, space, out)
    summary["new_trials"] = len(study.trials) - before
    summary["trials_per_hour"] = round(3600 * summary["new_trials"] / max(seconds, 1e-9), 1)
    summary["storage"] = storage
    write_json(out / "summary.json", summary)
    return summary


def _existing_trials(storage: str, name: str) -> list:
    try:
        return optuna.load_study(study_name=name, storage=open_storage(storage)).trials
    except KeyError:
        return []


def main(argv: list[str], default_task: Path | None, prog: str) -> int:
    p = argparse.ArgumentParser(prog=f"{prog} tune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_task_flags(p, default_task, folds_default="0")
    p.add_argument("--trials", type=int, default=20, help="trials this command runs, shared among its --jobs "
                   "processes; other workers on the study run their own (default 20)")
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    p.add_argument("--storage", help="sqlite:///FILE, postgresql://... (workers on any machine), or journal:FILE "
                                     "(no server: a file system every worker can lock, a local disk or NFS "
                                     "with working locks) (default: sqlite:///runs/tune/<study>/study.db)")
    p.add_argument("--study", help="study name (default <task>-<dataset>)")
    p.add_argument("--space", type=Path, help="search space YAML (default: model/training/search_spaces/<kind>.yaml)")
    p.add_argument("--out", type=Path, help="study folder (default runs/tune/<study>)")
    p.add_argument("--jobs", type=int, default=1, help="run the trials in this many processes at once, on one "
                   "study (to fill a GPU; the storage defaults to journal:<study folder>/study.journal)")
    p.add_argument("--job-index", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(folds="0")
    args = p.parse_args(argv)
    if args.jobs < 1 or args.trials < 1:
        p.error("--jobs and --trials must be at least 1")
    task = task_of(args)
    overrides = overrides_from(args)
    args.jobs, devices = jobs_and_devices(overrides, args.jobs)
    pinned = {k for k, v in overrides.items() if v is not None} - {"data", "folds"}
    base = build_config(task, args.config, overrides)
    if args.jobs > 1:
        summary = tune_in_jobs(task, base, args, argv, pinned, devices)
    else:
        # The default storage lives in the study folder: one worker, so it seeds as job 0 and repeats itself.
        # A storage named on the command line may be shared by workers started alike (--job-index None).
        job = args.job_index if args.job_index is not None else 0 if args.storage is None else None
        summary = tune(task, base, args.trials, args.timeout, args.storage, args.study,
                       args.space or SPACES / f"{task.kind.name}.yaml", args.out, pinned, job)
    print(json.dumps({k: v for k, v in summary.items() if k != "importance"}, indent=2, default=str))
    if isinstance(summary.get("importance"), dict):
        print("importance: " + ", ".join(f"{k} {v:.2f}" for k, v in summary["importance"].items()))
    print(f"{summary['new_trials']} trials, {summary['trials_per_hour']} trials per hour")
    if not math.isnan(summary.get("best_value", float("nan"))):
        print(f"best config: {study_folder(task, base, args.study, args.out)[1] / 'best_config.yaml'}")
    return 0
