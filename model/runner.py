"""What ``python run.py`` does, as functions that run.py and the pre-flight check both call: find the
bundles, and for each one, in isolation, load it, list its test folder, predict and write its output (a
CSV, or masks: the task's kind writes them).

One task's failure (a refused bundle, a broken manifest, an empty folder, any exception) is reported with
its reason and never costs another task its CSV. A CSV left in the output folder by an earlier run of a
task that fails now is moved aside, so it cannot be taken for this run's.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .bundle import Bundle, find_bundles, load_bundle
from .device import decode_threads, resolve_device, resolve_precision
from .manifest import read_manifest
from .onnx_backend import select_engine
from .predict import auto_batch_size, list_test_images, predict_paths
from .task import default_csv_name


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
class BundleRun:
    """What run.py did with one bundle: the output it wrote (a CSV or a folder of masks, as its kind writes)
    and what went wrong."""

    name: str
    output: Path | None = None
    images: int = 0
    engine: str = ""
    seconds: float = 0.0
    failed: bool = False                # True: the task could not write its output (a missing folder is not a failure)
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
    """The output (a CSV, or a folder of masks) a bundle writes, from its manifest when that can be read,
    else the default CSV name of a task named as its folder."""
    try:
        return read_manifest(folder)["task"]["output"]["file"]
    except Exception:  # noqa: BLE001  (whatever the folder holds: the caller reports the bundle itself)
        return default_csv_name(folder.name)


@dataclass
class Loaded:
    """A bundle that loaded, with its test folder, ready to predict."""
    folder: Path
    prepared: Prepared
    test_folder: Path


def open_bundle(folder: Path, options: RunOptions, device: torch.device) -> tuple[BundleRun, Loaded | None]:
    """Read, verify and prepare one bundle. Never raises: a failure is in the result (and the Loaded is None,
    as it is when the task's test folder is absent)."""
    result = BundleRun(folder.name)
    started = time.perf_counter()
    try:
        prepared = prepare(folder, options, device)
        task = prepared.bundle.task
        result.name = task.name
        test_folder = options.test_dir / task.test_folder
        if not test_folder.is_dir():
            result.problems.append(f"{test_folder}: folder not found, so {task.output.file} was not written")
            _move_stale(options.out_dir / task.output.file, result)
            return result, None
        if prepared.note:
            result.problems.append(prepared.note)
        return result, Loaded(folder, prepared, test_folder)
    except Exception as e:  # noqa: BLE001  (one task's failure, whatever it is, must not cost the others)
        _fail(result, e, options.out_dir, _output_name(folder))
        return result, None
    finally:
        result.seconds = time.perf_counter() - started


def predict_task(loaded: Loaded, result: BundleRun, options: RunOptions, device: torch.device) -> BundleRun:
    """Predict a loaded bundle's test folder and write its outputs. Never raises."""
    started = time.perf_counter() - result.seconds
    task = loaded.prepared.bundle.task
    try:
        listing = list_test_images(loaded.test_folder, options.id_mode or task.output.id)
        result.problems.extend(listing.problems)
        if not listing.images:
            raise ValueError(f"{loaded.test_folder}: no image files in the test folder, so {task.output.file} "
                             "was not written")
        prediction = predict_folder(loaded.prepared, [image.path for image in listing.images], options, device)
        for _, reason in sorted(prediction.failed.items()):
            result.problems.append(f"{reason} -> {task.kind.failed_note}")
        result.output = task.kind.write_outputs(task, options.out_dir, listing.images, prediction,
                                             loaded.prepared.bundle.rule, options.id_mode)
        result.images, result.engine = len(listing.images), loaded.prepared.engine.name
    except Exception as e:  # noqa: BLE001
        _fail(result, e, options.out_dir, task.output.file)
    finally:
        result.seconds = time.perf_counter() - started
    return result


def _fail(result: BundleRun, error: Exception, out_dir: Path, output: str) -> None:
    result.failed, result.output = True, None
    reason = str(error) if isinstance(error, (ValueError, OSError)) else f"unexpected {type(error).__name__}: {error}"
    result.problems.append(f"{result.name}: {reason}")
    _move_stale(out_dir / output, result)


def _move_stale(output: Path, result: BundleRun) -> None:
    """Move an output an earlier run left (a CSV, or a folder of masks) aside as ``<name>.stale``; never
    raises (an output that cannot be moved is reported, and costs no other task its output)."""
    if not (output.is_file() or output.is_dir()):
        return
    stale = output.with_name(output.name + ".stale")
    try:
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale)
        elif stale.exists() or stale.is_symlink():
            stale.unlink()
        os.replace(output, stale)
    except OSError as e:
        result.failed = True
        result.problems.append(f"{output}: left by an earlier run, and it cannot be moved aside ({e.strerror or e}); "
                               "remove it by hand: it is not this run's prediction")
        return
    result.problems.append(f"{output}: left by an earlier run; moved to {stale.name} so that it is not taken "
                           "for this run's predictions")


@dataclass
class RunReport:
    results: list[BundleRun]
    problems: list[str]          # about the weights folder itself (a bundle folder without a manifest, ...)
    device: torch.device
    seconds: float

    @property
    def written(self) -> list[BundleRun]:
        return [r for r in self.results if r.output is not None]

    @property
    def exit_code(self) -> int:
        """0 when every task whose test folder exists wrote its CSV, 1 otherwise."""
        return 1 if self.problems or any(r.failed for r in self.results) or not self.written else 0


def run(options: RunOptions) -> RunReport:
    """Every bundle under ``options.weights`` (or those ``options.tasks`` names) on ``options.test_dir``.

    Every bundle is loaded first, each in isolation; two bundles that would write one output are a clash
    only when both loaded (a broken bundle claims nothing); then each loaded bundle predicts."""
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
    loaded = [open_bundle(folder, options, device) for folder in folders]
    results, outputs = [], {}
    for result, ready in loaded:
        if ready is None:
            results.append(result)
            continue
        output = ready.prepared.bundle.task.output.file
        if output in outputs:
            result.failed = True              # reported with its task, beside what its loading noticed
            result.problems.append(f"{ready.folder}: writes {output} like {outputs[output]}; skipped (rename one "
                                   "task's output.file)")
            results.append(result)
            continue
        outputs[output] = ready.folder
        results.append(predict_task(ready, result, options, device))
    return RunReport(results, problems, device, time.perf_counter() - started)


def _task_name(folder: Path) -> str:
    try:
        return read_manifest(folder)["task"]["name"]
    except Exception:  # noqa: BLE001  (a broken bundle is reported when it is loaded)
        return folder.name
