"""Write one output per bundle for the test set (a CSV, or a segmentation task's masks): ``python run.py``.

With no arguments this does the organiser's job: every bundle in model/weights/ (for BI-RADS: cla and fea)
reads its folder of ../testB (relative to this project folder, wherever it is started from) and writes its
CSV (cla_pre.csv, fea_pre.csv) into this folder. A segmentation bundle writes what its task's output asks
for: a folder of mask PNGs (one per image, at the image's size), an RLE CSV or a summary CSV.
``python run.py --help`` lists the options.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parent
sys.path.insert(0, str(PROJECT))

import model.kinds  # noqa: E402,F401  (the entry point registers the task kinds)
from model.bundle import WEIGHTS_DIR  # noqa: E402
from model.cli import guarded  # noqa: E402
from model.device import PRECISIONS, DeviceError, resolve_device  # noqa: E402
from model.ensemble import make_tta  # noqa: E402
from model.runner import RunOptions, run  # noqa: E402
from model.task import ID_MODES  # noqa: E402

ID_COLUMNS = {header: mode for mode, header in ID_MODES.items()}  # --id-column id|img_name -> number|filename


def _count(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}")
        return value
    return parse


def _tta(text: str):
    try:
        make_tta(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--test-dir", type=Path, default=PROJECT.parent / "testB",
                   help="the test folder; each task reads its own subfolder of it (default: ../testB beside the project)")
    p.add_argument("--out-dir", type=Path, default=PROJECT, help="where the outputs go: each task's CSV, or its masks "
                   "(a folder of PNGs, an RLE or summary CSV) (default: the project folder)")
    p.add_argument("--weights", type=Path, default=WEIGHTS_DIR,
                   help="a bundle folder, or a folder of bundles (default: model/weights)")
    p.add_argument("--tasks", help="comma list of the tasks to run (default: every bundle)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS, help="auto = fp16 on CUDA, fp32 on CPU")
    p.add_argument("--batch-size", type=_count(0), default=0,
                   help="images per forward; 0 = auto (on CPU small batches stay in cache and run fastest: "
                        "1 image per ONNX Runtime stream, 4 views for PyTorch; 32 on CUDA)")
    p.add_argument("--tta", type=_tta, default="hflip", help="none, hflip or a comma list (hflip,multiply); default hflip")
    p.add_argument("--id-column", choices=tuple(ID_COLUMNS),
                   help="first column of a CSV output: the number in the file name (id) or the file name (img_name); "
                        "default: each task's own")
    p.add_argument("--workers", type=_count(0), default=-1,
                   help="image decoding threads (default: cores - 1, at most 16 on CUDA and 4 on CPU)")
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "onnx"),
                   help="forward pass: auto = ONNX Runtime on CPU when installed (faster, same answers), "
                        "PyTorch otherwise and on CUDA")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="channels-last memory layout (default on: faster on CPU and CUDA)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--check", action="store_true",
                   help="pre-flight check of this folder (environment, bundles, dry run, timing, and whether each ONNX "
                        "graph is loaded from the cache or exported) instead of predicting")
    p.add_argument("--images", type=_count(1), default=1700, help="with --check: estimate the run time for this many images")
    p.add_argument("--debug", action="store_true", help="show a traceback instead of a one-line error")
    return p


def writable_folder(folder: Path) -> str | None:
    """None when CSVs can be written into ``folder`` (made if missing), else why not."""
    if folder.exists() and not folder.is_dir():
        return f"--out-dir {folder} is a file, not a folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as e:
        return f"--out-dir {folder}: cannot write there ({e.strerror or e}); choose a writable folder"
    return None


def main(argv=None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        resolve_device(args.device)
    except DeviceError as e:
        parser.error(str(e))
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    options = RunOptions(args.test_dir, args.out_dir, args.weights, tasks, args.device, args.precision,
                         args.batch_size, make_tta(args.tta), ID_COLUMNS.get(args.id_column), args.workers,
                         args.backend, args.channels_last, progress=not args.quiet)
    if args.check:
        from model.check import check_submission, print_report
        report = check_submission(PROJECT, options, args.images)
        print_report(report)
        return 0 if report.ok else 1
    if not args.test_dir.is_dir():
        print(f"error: test folder {args.test_dir.resolve()} not found. Place the test set there or pass --test-dir.",
              file=sys.stderr)
        return 2
    problem = writable_folder(args.out_dir)
    if problem:
        parser.error(problem)
    if not args.weights.exists():
        parser.error(f"--weights {args.weights}: not found; pass a bundle folder or a folder of bundles")
    report = run(options)
    for result in report.results:
        if result.output:
            print(f"{result.name}: {result.images} images -> {result.output} ({result.engine}, {result.seconds:.1f}s)")
    total = sum(r.images for r in report.written)
    per_image = f", {1000 * report.seconds / total:.1f} ms per image" if total else ""
    print(f"done in {report.seconds:.1f}s on {report.device} (tta={args.tta}): {total} images{per_image}")
    problems = report.problems + [p for r in report.results for p in r.problems]
    if problems:
        print(f"{len(problems)} problem(s):", file=sys.stderr)
        for line in problems:
            print(f"  - {line}", file=sys.stderr)
    return report.exit_code


def cli(argv=None) -> int:
    """``main`` as the command line runs it: errors are messages, not tracebacks (--debug shows them)."""
    return guarded(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
