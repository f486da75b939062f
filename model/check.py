"""Pre-flight check of a submission folder: ``python run.py --check [--images N]``.

Verifies that environment.yml and requirements.txt agree; that every bundle is present, matches its
sha256 and loads on CPU; what each bundle's CV rests on (folds, OOF coverage, the decision rule), with a
warning where that is thin; whether the next run.py loads each ONNX graph from the cache or
exports it (and on every run, when the cache is not writable); and that a dry run of run.py on generated
images of awkward kinds (png/jpg, grayscale, RGBA, 16-bit, palette, large) writes valid CSVs. Then it
times run.py's prediction loop on those images and estimates the time for N images. Every problem comes
with the fix.
"""
from __future__ import annotations

import dataclasses
import re
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import yaml

from .bundle import find_bundles, load_bundle
from .errors import BundleError
from .onnx_backend import cached_graph, unusable_reason
from .predict import list_test_images
from .runner import RunOptions, prepare, predict_folder, run
from .synthetic import make_awkward_folder

PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([0-9][A-Za-z0-9.+\-]*)$")
THIN_FOLDS, THIN_OOF = 3, 100   # below these, a bundle's CV is a rough guide only


@dataclass
class CheckReport:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    per_image_seconds: float | None = None  # run.py's prediction loop on the dry-run images
    estimate_seconds: float | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def read_pins(requirements: Path) -> dict[str, str]:
    """name -> version of every line; a line that is not an exact pin raises ValueError."""
    pins = {}
    for number, line in enumerate(requirements.read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("--"):
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


def describe_bundle(bundle, report: CheckReport) -> None:
    """What the bundle's CV rests on, in one note, and a warning when that is thin."""
    manifest, name = bundle.manifest, bundle.name
    cv = manifest.get("cv") or {}
    folds_in = len(manifest["folds"])
    done, n_oof, n_images = cv.get("folds_done") or [], cv.get("n_oof"), cv.get("n_images")
    score = cv.get("oof_score_tuned_rule")
    network = manifest["network"]
    coverage = f"OOF over {n_oof} of {n_images} images from {len(done)} fold(s)" if n_oof else "no OOF record"
    rule = (cv.get("rule") or {}).get("why", "")
    report.notes.append(f"{name}: {folds_in} fold network(s) of {network['backbone']} at {network['input_size']} px; "
                        f"{coverage}; CV {cv.get('metric', 'score')} "
                        f"{'unknown' if score is None else f'{score:.4f}'}" + (f"; decision rule: {rule}" if rule else ""))
    thin = []
    if folds_in < THIN_FOLDS:
        thin.append(f"only {folds_in} fold network(s) in the bundle")
    if cv.get("folds_missing"):
        thin.append(f"folds {cv['folds_missing']} were never trained")
    if n_oof is not None and n_oof < THIN_OOF:
        thin.append(f"the CV rests on {n_oof} out-of-fold images")
    if score is None:
        thin.append("no CV score recorded")
    if thin:
        report.warnings.append(f"{name}: {'; '.join(thin)}: treat its CV as a rough guide")


def as_written(task, id_mode: str | None):
    """The task as run.py writes it with ``--id-column``: its id mode, and that mode's header when it differs."""
    if not id_mode or id_mode == task.output.id:
        return task
    output = dataclasses.replace(task.output, id=id_mode, id_header=task.output.header_for(id_mode))
    return dataclasses.replace(task, output=output)


def check_graphs(bundles, report: CheckReport, dry_run=None, before=None) -> None:
    """What the next run.py does with each bundle's ONNX graph. ``dry_run``: the check's own run of run.py,
    whose engines are those of the next run and which has already exported and cached any graph that was
    missing (``before``: name -> (status, message) of cached_graph before it); without one, the cache now."""
    results = {r.name: r for r in dry_run.results} if dry_run is not None else {}
    for bundle in bundles:
        reason = unusable_reason(bundle)
        if reason:
            report.notes.append(f"{bundle.name}: ONNX Runtime not used ({reason}); run.py uses PyTorch")
            continue
        result = results.get(bundle.name)
        if result is not None and result.engine and result.engine != "onnxruntime":
            fallback = [p for p in result.problems if p.startswith("ONNX Runtime not used")]
            if fallback:  # every run tries the export again, then runs the slower PyTorch
                report.warnings.append(f"{bundle.name}: {fallback[0]}")
            else:
                report.notes.append(f"{bundle.name}: run.py runs PyTorch ({result.engine}) with these options; "
                                    "no ONNX graph is used")
            continue
        was, was_message = (before or {}).get(bundle.name, (None, ""))
        _, status, message = cached_graph(bundle)
        if "mismatch" in (was, status):  # the cache was changed behind our back: worth a look, even if repaired
            report.warnings.append(f"{bundle.name}: ONNX graph {was_message if was == 'mismatch' else message}")
        if status == "verified" and was in ("missing", "mismatch"):
            message = f"exported by this check's dry run, {message}"
        if status != "mismatch":
            report.notes.append(f"{bundle.name}: ONNX graph {message}")


def check_submission(project: Path, options: RunOptions, n_images: int = 1700, dry_run_images: int = 16) -> CheckReport:
    report = CheckReport()
    report.problems += check_environment(project)
    if not report.problems:
        report.notes += installed_mismatches(project)
    folders, problems = find_bundles(options.weights)
    report.problems += problems
    bundles = []
    for folder in folders:
        try:
            bundles.append(load_bundle(folder, "cpu"))  # reads every checkpoint, so a broken one shows here
        except BundleError as e:
            report.problems.append(str(e))
    for bundle in bundles:
        describe_bundle(bundle, report)
    if report.problems or not bundles:
        check_graphs(bundles, report)
        return report
    before = {bundle.name: cached_graph(bundle)[1:] for bundle in bundles if unusable_reason(bundle) is None}
    with tempfile.TemporaryDirectory(prefix="harness-check-") as tmp:
        tmp = Path(tmp)
        for bundle in bundles:
            make_awkward_folder(tmp / "test" / bundle.task.test_folder, dry_run_images)
        dry = dataclasses.replace(options, test_dir=tmp / "test", out_dir=tmp / "out", tasks=None, progress=False)
        started = time.perf_counter()
        outcome = run(dry)
        seconds = time.perf_counter() - started
        check_graphs(bundles, report, outcome, before)  # after the dry run: the cache as the next run finds it
        for result in outcome.results:
            if result.failed:
                report.problems += [f"dry run: {p}" for p in result.problems]
        if outcome.exit_code != 0 and not report.problems:
            report.problems.append("the dry run of run.py did not write every CSV; see the messages above")
        for bundle in bundles:
            task = as_written(bundle.task, options.id_mode)
            listing = list_test_images(tmp / "test" / task.test_folder, task.output.id)
            report.problems += task.kind.validate_output(tmp / "out" / task.output.file, task, listing.images)
        if report.problems:
            return report
        per_image, count = time_per_image(dry, outcome.device, bundles), sum(r.images for r in outcome.results)
    # What the dry run spent beyond its images is paid once per run (bundles, engines; on a machine without
    # the cached ONNX graphs, their export too), so the estimate holds for a first run.
    fixed = max(0.0, seconds - count * per_image)
    report.per_image_seconds = per_image
    report.estimate_seconds = fixed + n_images * per_image
    report.notes.append(f"dry run: {count} images in {seconds:.1f}s; {1000 * per_image:.0f} ms per image "
                        f"(every task counted) plus {fixed:.1f}s once (bundles, ONNX graphs)")
    report.notes.append(f"estimated time for {n_images} images per task: "
                        f"{fixed + len(bundles) * n_images * per_image:.0f}s "
                        f"({(fixed + len(bundles) * n_images * per_image) / 60:.1f} min)")
    return report


def time_per_image(options: RunOptions, device, bundles) -> float:
    """Seconds per image of run.py's prediction loop alone (decode and forward, set up as run.py sets them
    up), over every dry-run image; bundle loading and engine start-up are not counted."""
    import torch
    seconds, count = 0.0, 0
    for bundle in bundles:
        prepared = prepare(bundle.folder, options, device)
        paths = [i.path for i in list_test_images(options.test_dir / bundle.task.test_folder, bundle.task.output.id).images]
        started = time.perf_counter()
        predict_folder(prepared, paths, options, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - started
        count += len(paths)
    return seconds / max(1, count)


def print_report(report: CheckReport) -> None:
    for note in report.notes:
        print(f"  {note}")
    for warning in report.warnings:
        print(f"  WARNING {warning}")
    if report.ok:
        verdict = "ready to hand in" if not report.warnings else f"ready to hand in, with {len(report.warnings)} warning(s) above"
        print(f"check passed: this folder is {verdict}")
    else:
        print(f"check FAILED, {len(report.problems)} problem(s):")
        for problem in report.problems:
            print(f"  - {problem}")
