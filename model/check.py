"""Pre-flight check of a submission folder: ``python run.py --check [--images N]``.

Verifies that environment.yml and requirements.txt agree, that both bundles are present, match their
sha256 and load on CPU, and that a dry run of run.py on generated images of awkward kinds (png/jpg,
grayscale, RGBA, 16-bit, palette, large) writes valid CSVs. Then times run.py's prediction loop on those
images and estimates the time for N images. Every problem comes with the fix.
"""
from __future__ import annotations

import re
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pandas as pd
import yaml

from .bundle import BundleError, load_bundle
from .predict import list_test_images
from .synthetic import make_awkward_folder
from .tasks import TASKS

PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([0-9][A-Za-z0-9.+\-]*)$")


@dataclass
class CheckReport:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    per_image_seconds: float | None = None  # run.py's prediction loop on the dry-run images

    @property
    def ok(self) -> bool:
        return not self.problems


def read_pins(requirements: Path) -> dict[str, str]:
    """name -> version of every line; a line that is not an exact pin raises ValueError."""
    pins = {}
    for number, line in enumerate(requirements.read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = PIN.match(line)
        if not match:
            raise ValueError(f"{requirements}:{number}: {line!r} is not an exact pin (name==version)")
        pins[match.group(1).lower()] = match.group(2)
    return pins


def check_environment(project: Path) -> list[str]:
    problems = []
    env_file, req_file = project / "environment.yml", project / "requirements.txt"
    for path in (env_file, req_file):
        if not path.is_file():
            problems.append(f"{path}: missing; restore it from git")
    if problems:
        return problems
    try:
        read_pins(req_file)
    except ValueError as e:
        problems.append(f"{e}; pin it exactly so the organiser installs what you tested")
    env = yaml.safe_load(env_file.read_text(encoding="utf-8")) or {}
    deps = env.get("dependencies") or []
    pip_sections = [d["pip"] for d in deps if isinstance(d, dict) and "pip" in d]
    if pip_sections != [["-r requirements.txt"]]:
        problems.append(f"{env_file}: its pip section must be exactly '- -r requirements.txt' so that conda installs "
                        f"the same versions as pip (found {pip_sections})")
    if not any(isinstance(d, str) and d.replace(" ", "").startswith("python=") for d in deps):
        problems.append(f"{env_file}: no python=3.x dependency; add '- python=3.11'")
    return problems


def installed_mismatches(project: Path) -> list[str]:
    """Pinned packages whose installed version differs here (a note: the organiser installs the pins)."""
    notes = []
    for name, version in read_pins(project / "requirements.txt").items():
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            notes.append(f"{name}=={version} is not installed here")
            continue
        if have.split("+")[0] != version.split("+")[0]:
            notes.append(f"{name}: {have} installed here, {version} pinned")
    return notes


def validate_csv(path: Path, task_name: str, ids: list[int]) -> list[str]:
    task = TASKS[task_name]
    if not path.is_file():
        return [f"{path}: not written"]
    frame = pd.read_csv(path)
    expected = ["id", *task.label_columns]
    if list(frame.columns) != expected:
        return [f"{path}: header {list(frame.columns)}, expected {expected}"]
    problems = []
    if frame["id"].tolist() != ids:
        problems.append(f"{path}: ids {frame['id'].tolist()[:10]}... are not the test images' ids in order")
    allowed = set(range(task.num_outputs)) if not task.multilabel else {0, 1}
    bad = ~frame[list(task.label_columns)].isin(allowed).all(axis=1)
    if bad.any():
        problems.append(f"{path}: {int(bad.sum())} row(s) with labels outside {sorted(allowed)}")
    return problems


def time_per_image(weights: Path, test_dir: Path, device: str = "auto", tta: str = "hflip", workers: int = 0) -> float:
    """Seconds per image of run.py's prediction loop alone (decode and forward, as run.py sets them up),
    over every image in ``test_dir``/<task>; bundle loading and engine start-up are not counted."""
    import torch

    from .bundle import make_tta
    from .device import resolve_device, resolve_precision
    from .onnx_backend import select_engine
    from .predict import auto_batch_size, predict_paths

    device, views, seconds, count = resolve_device(device), make_tta(tta), 0.0, 0
    for name in TASKS:
        bundle = load_bundle(weights / name, device, lazy=True)
        engine, _ = select_engine(bundle, "auto", device)
        paths = [image.path for image in list_test_images(test_dir / name).images]
        started = time.perf_counter()
        predict_paths(bundle, paths, device, resolve_precision(device), auto_batch_size(device, views, engine),
                      workers, views, progress=False, engine=engine)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - started
        count += len(paths)
    return seconds / max(1, count)


def check_submission(project: Path, weights: Path, n_images: int = 1700, dry_run_images: int = 16,
                     device: str = "auto", tta: str = "hflip", workers: int = 0) -> CheckReport:
    import run  # the real entry point, as the organiser will call it

    report = CheckReport()
    report.problems += check_environment(project)
    if not report.problems:
        report.notes += installed_mismatches(project)
    for name in TASKS:
        try:
            bundle = load_bundle(weights / name, "cpu")  # reads every checkpoint, so a broken one shows here
            report.notes.append(f"{name} bundle: {len(bundle.manifest['folds'])} fold(s) of {bundle.manifest['backbone']} "
                                f"at {bundle.img_size}px, CV {bundle.manifest.get('cv', {}).get('oof_score_tuned_rule')}")
        except BundleError as e:
            report.problems.append(str(e))
    if report.problems:
        return report
    with tempfile.TemporaryDirectory(prefix="birads-check-") as tmp:
        tmp = Path(tmp)
        for name in TASKS:
            make_awkward_folder(tmp / "test" / name, dry_run_images)
        started = time.perf_counter()
        code = run.main(["--weights", str(weights), "--test-dir", str(tmp / "test"), "--out-dir", str(tmp / "out"),
                         "--quiet", "--device", device, "--tta", tta, "--workers", str(workers)])
        seconds = time.perf_counter() - started
        if code != 0:
            report.problems.append(f"dry run of run.py exited with {code}; see the messages above")
        for name in TASKS:
            ids = [image.id for image in list_test_images(tmp / "test" / name).images]
            report.problems += validate_csv(tmp / "out" / f"{name}_pre.csv", name, ids)
        if code != 0:
            return report
        per_image = time_per_image(weights, tmp / "test", device, tta, workers)
    # Everything the dry run spent beyond its images is paid once per run (bundles, engines; on a machine
    # without the cached ONNX graphs, their export too), so the estimate holds for a first run.
    fixed = max(0.0, seconds - 2 * dry_run_images * per_image)
    estimate = fixed + n_images * per_image
    report.notes.append(f"dry run: {2 * dry_run_images} images in {seconds:.1f}s; {1000 * per_image:.0f} ms per image "
                        f"(both tasks counted) plus {fixed:.1f}s once (bundles, ONNX graphs)")
    report.notes.append(f"estimated time for {n_images} images: {estimate:.0f}s ({estimate / 60:.1f} min)")
    report.per_image_seconds = per_image
    return report


def print_report(report: CheckReport) -> None:
    for note in report.notes:
        print(f"  {note}")
    if report.ok:
        print("check passed: this folder is ready to hand in")
    else:
        print(f"check FAILED, {len(report.problems)} problem(s):")
        for problem in report.problems:
            print(f"  - {problem}")
