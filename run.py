"""Write cla_pre.csv and fea_pre.csv for the test set: ``python run.py``.

With no arguments this does the organiser's job: it reads ../testB/cla and ../testB/fea (relative to this
project folder, wherever it is started from), predicts with the frozen bundles in model/weights/ and writes
both CSVs into this folder. ``python run.py --help`` lists the options.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent
sys.path.insert(0, str(PROJECT))

from model.bundle import WEIGHTS_DIR, BundleError, load_bundle, make_tta  # noqa: E402
from model.device import PRECISIONS, resolve_device, resolve_precision  # noqa: E402
from model.predict import ID_COLUMNS, auto_batch_size, list_test_images, predict_paths, write_predictions  # noqa: E402
from model.onnx_backend import select_engine  # noqa: E402
from model.tasks import TASKS  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--test-dir", type=Path, default=PROJECT.parent / "testB",
                   help="folder holding cla/ and fea/ (default: ../testB beside the project)")
    p.add_argument("--out-dir", type=Path, default=PROJECT, help="where the CSVs go (default: the project folder)")
    p.add_argument("--weights", type=Path, default=WEIGHTS_DIR, help="folder with the cla/ and fea/ bundles")
    p.add_argument("--tasks", default="cla,fea", help="which tasks to run (default: cla,fea)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="auto = fp16 on CUDA, fp32 on CPU")
    p.add_argument("--batch-size", type=int, default=0,
                   help="images per forward; 0 = auto (on CPU small batches stay in cache and run fastest: "
                        "1 image per ONNX Runtime stream, 4 views for PyTorch; 32 on CUDA)")
    p.add_argument("--tta", default="hflip", help="none, hflip or a comma list (hflip,multiply); default hflip")
    p.add_argument("--id-column", default="id", choices=ID_COLUMNS,
                   help="first CSV column: the number in the file name (id) or the file name (img_name)")
    p.add_argument("--workers", type=int, default=min(4, max(0, (os.cpu_count() or 1) - 1)),
                   help="image decoding threads (default: cores - 1, at most 4)")
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "onnx"),
                   help="forward pass: auto = ONNX Runtime on CPU when installed (faster, same answers), "
                        "PyTorch otherwise and on CUDA")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="channels-last memory layout (default on: faster on CPU and CUDA)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--check", action="store_true",
                   help="pre-flight check of this folder (environment, bundles, dry run, timing) instead of predicting")
    p.add_argument("--images", type=int, default=1700, help="with --check: estimate the run time for this many images")
    return p


def run_task(task_name: str, args, device, precision, tta, problems: list[str]) -> int | None:
    """Predict one task's folder and write its CSV; return the image count, None if nothing was written."""
    task = TASKS[task_name]
    folder = args.test_dir / task.name
    if not folder.is_dir():
        problems.append(f"{folder}: folder not found, so {task.name}_pre.csv was not written")
        return None
    listing = list_test_images(folder)
    problems.extend(listing.problems)
    try:
        bundle = load_bundle(args.weights / task.name, device, lazy=True)
        engine, note = select_engine(bundle, args.backend, device, args.channels_last, precision)
    except BundleError as e:
        problems.append(f"{task.name}: {e}")
        return None
    paths = [image.path for image in listing.images]
    batch_size = args.batch_size or auto_batch_size(device, tta, engine)
    if note:
        problems.append(note)
    prediction = predict_paths(bundle, paths, device, precision, batch_size, args.workers, tta,
                               progress=not args.quiet, channels_last=args.channels_last, engine=engine)
    for _, reason in sorted(prediction.failed.items()):
        problems.append(f"{reason} -> predicted from the class prior")
    labels = task.decide(prediction.probs, bundle.rule)
    out = args.out_dir / f"{task.name}_pre.csv"
    write_predictions(out, task.label_columns, listing.images, labels, args.id_column)
    print(f"{task.name}: {len(paths)} images -> {out} ({engine.name})")
    return len(paths)


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    unknown = [t for t in args.tasks.split(",") if t.strip() and t.strip() not in TASKS]
    if unknown:
        print(f"error: unknown task(s) {unknown} in --tasks; use cla, fea or cla,fea", file=sys.stderr)
        return 2
    if args.check:
        from model.check import check_submission, print_report
        report = check_submission(PROJECT, args.weights, args.images, device=args.device, tta=args.tta,
                                  workers=args.workers)
        print_report(report)
        return 0 if report.ok else 1
    if not args.test_dir.is_dir():
        print(f"error: test folder {args.test_dir.resolve()} not found. Place the test set there "
              "(with cla/ and fea/ inside) or pass --test-dir.", file=sys.stderr)
        return 2
    device = resolve_device(args.device)
    precision = resolve_precision(device, args.precision)
    tta = make_tta(args.tta)
    problems: list[str] = []
    start = time.perf_counter()
    wanted = [t.strip() for t in args.tasks.split(",") if t.strip()]
    counts = {name: run_task(name, args, device, precision, tta, problems) for name in wanted}
    seconds = time.perf_counter() - start
    total = sum(c for c in counts.values() if c)
    per_image = f", {1000 * seconds / total:.1f} ms per image" if total else ""
    print(f"done in {seconds:.1f}s on {device} ({precision}, tta={args.tta}): {total} images{per_image}")
    if problems:
        print(f"{len(problems)} problem(s):", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
    written = [name for name, count in counts.items() if count is not None]
    missing_folder = [n for n in wanted if not (args.test_dir / n).is_dir()]
    return 0 if written and len(written) + len(missing_folder) == len(wanted) else 1


if __name__ == "__main__":
    sys.exit(main())
