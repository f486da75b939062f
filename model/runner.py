"""What ``python run.py`` does, as functions that run.py and the pre-flight check both call: find the
bundles, and for each one, in isolation, list its test folder, load it, predict and write its CSV.

One task's failure (a refused bundle, a broken manifest, an empty folder, any exception) is reported with
its reason and never costs another task its CSV. A CSV left in the output folder by an earlier run of a
task that fails now is moved aside, so it cannot be taken for this run's.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .bundle import Bundle, BundleError, find_bundles, load_bundle, read_manifest
from .device import decode_threads, resolve_device, resolve_precision
from .onnx_backend import select_engine
from .predict import auto_batch_size, list_test_images, predict_paths, write_predictions


@dataclass
class RunOptions:
    test_dir: Path
    out_dir: Path
    weights: Path
    tasks: list[str] | None = None      # task names to run; None: every bundle
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 0                 # 0: auto_batch_size
    tta: object = None                  # a ttach.Compose or None
    id_mode: str | None = None          # number | filename; None: each task's own
    workers: int = -1                  # decoding threads; -1: from the core count and the device
    backend: str = "auto"
    channels_last: bool = True
    progress: bool = False


@dataclass
class TaskResult:
    name: str
    csv: Path | None = None
    images: int = 0
    engine: str = ""
    seconds: float = 0.0
    failed: bool = False                # True: the task could not write its CSV (a missing folder is not a failure)
    problems: list[str] = field(default_factory=list)


@dataclass
class Prepared:
    bundle: Bundle
    engine: object
    batch_size: int
    precision: str
    note: str | None


def prepare(folder: Path, options: RunOptions, device: torch.device) -> Prepared:
    """Load a bundle (networks on first use) and choose its engine and batch size, as run.py does."""
    bundle = load_bundle(folder, device, lazy=True)
    precision = resolve_precision(device, options.precision)
    engine, note = select_engine(bundle, options.backend, device, options.channels_last, precision)
    batch_size = options.batch_size or auto_batch_size(device, options.tta, engine)
    return Prepared(bundle, engine, batch_size, precision, note)


def predict_folder(prepared: Prepared, paths: list[Path], options: RunOptions, device: torch.device):
    return predict_paths(prepared.bundle, paths, device, prepared.precision, prepared.batch_size,
                         decode_threads(options.workers, device),
                         options.tta, progress=options.progress, channels_last=options.channels_last,
                         engine=prepared.engine)


def _output_name(folder: Path) -> str:
    """The CSV a bundle writes, from its manifest when that can be read, else <folder>_pre.csv."""
    try:
        return read_manifest(folder)["task"]["output"]["file"]
    except (BundleError, KeyError, TypeError):
        return f"{folder.name}_pre.csv"


def run_task(folder: Path, options: RunOptions, device: torch.device) -> TaskResult:
    """Predict one bundle's test folder and write its CSV. Never raises: every failure is in the result."""
    result = TaskResult(folder.name)
    started = time.perf_counter()
    try:
        manifest_task = read_manifest(folder)["task"]
        result.name = manifest_task["name"]
        test_folder = options.test_dir / manifest_task["test_folder"]
        if not test_folder.is_dir():
            result.problems.append(f"{test_folder}: folder not found, so {manifest_task['output']['file']} "
                                   "was not written")
            return result
        prepared = prepare(folder, options, device)
        task = prepared.bundle.task
        if folder.name != task.name:
            result.problems.append(f"{folder}: holds the {task.name!r} bundle (it reads {test_folder} and writes "
                                   f"{task.output.file} all the same)")
        listing = list_test_images(test_folder, options.id_mode or task.output.id)
        result.problems.extend(listing.problems)
        if prepared.note:
            result.problems.append(prepared.note)
        prediction = predict_folder(prepared, [image.path for image in listing.images], options, device)
        for _, reason in sorted(prediction.failed.items()):
            result.problems.append(f"{reason} -> predicted from the class prior")
        labels = task.decide(prediction.probs, prepared.bundle.rule)
        result.csv = options.out_dir / task.output.file
        write_predictions(result.csv, task, listing.images, labels, prediction.probs, options.id_mode)
        result.images, result.engine = len(listing.images), prepared.engine.name
    except Exception as e:  # noqa: BLE001  (one task's failure, whatever it is, must not cost the others)
        result.failed, result.csv = True, None
        reason = str(e) if isinstance(e, (ValueError, OSError)) else f"unexpected {type(e).__name__}: {e}"
        result.problems.append(f"{result.name}: {reason}")
        _move_stale(options.out_dir / _output_name(folder), result)
    finally:
        result.seconds = time.perf_counter() - started
    return result


def _move_stale(csv: Path, result: TaskResult) -> None:
    if csv.is_file():
        stale = csv.with_name(csv.name + ".stale")
        os.replace(csv, stale)
        result.problems.append(f"{csv}: left by an earlier run; moved to {stale.name} so that it is not taken "
                               "for this run's predictions")


@dataclass
class RunReport:
    results: list[TaskResult]
    problems: list[str]          # about the weights folder itself (a bundle folder without a manifest, ...)
    device: torch.device
    seconds: float

    @property
    def written(self) -> list[TaskResult]:
        return [r for r in self.results if r.csv is not None]

    @property
    def exit_code(self) -> int:
        """0 when every task whose test folder exists wrote its CSV, 1 otherwise."""
        return 1 if self.problems or any(r.failed for r in self.results) or not self.written else 0


def run(options: RunOptions) -> RunReport:
    """Every bundle under ``options.weights`` (or those ``options.tasks`` names) on ``options.test_dir``."""
    device = resolve_device(options.device)
    started = time.perf_counter()
    folders, problems = find_bundles(options.weights)
    if options.tasks is not None:
        names = {f: _task_name(f) for f in folders}
        unknown = sorted(set(options.tasks) - set(names.values()))
        if unknown:
            raise ValueError(f"--tasks {','.join(unknown)}: no such bundle in {options.weights} "
                             f"(there: {', '.join(sorted(names.values())) or 'none'})")
        folders = [f for f in folders if names[f] in options.tasks]
        problems = []
    results, outputs = [], {}
    for folder in folders:
        output = _output_name(folder)
        if output in outputs:
            problems.append(f"{folder}: writes {output} like {outputs[output]}; skipped (rename one task's output.file)")
            continue
        outputs[output] = folder
        results.append(run_task(folder, options, device))
    return RunReport(results, problems, device, time.perf_counter() - started)


def _task_name(folder: Path) -> str:
    try:
        return read_manifest(folder)["task"]["name"]
    except (BundleError, KeyError, TypeError):
        return folder.name
