"""Several training processes side by side: ``--jobs N`` for folds (train) and for trials (tune).

One fold of a small dataset cannot fill a GPU (the step is launch-bound at the recipe's batch size), so
N folds, or N Optuna trials, run as N processes on one device. Each is ``python train.py`` with the
user's own arguments plus its share of the work (later flags win in argparse), its share of the CPU
threads and loader workers, and its output prefixed with its number. Processes, not threads: each has
its own CUDA context and no lock to share. With a device list (``--device cuda:0,1,2,3``) the jobs go to the
devices in turn, each pinned to one.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..device import cpu_cores

PROJECT = Path(__file__).resolve().parents[2]


def workers_per_job(workers: int, jobs: int) -> int:
    """Loader processes for each of ``jobs``: as asked, or for -1 an equal share of the cores."""
    return max(0, cpu_cores() // jobs - 1) if workers < 0 else workers


def strip_option(argv: list[str], name: str) -> list[str]:
    """``argv`` without ``name VALUE`` / ``name=VALUE``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(f"{name}="):
            out.append(arg)
    return out


def run_jobs(argvs: list[list[str]]) -> float:
    """Run ``python train.py ARGV`` for each ARGV at once; raise when one fails. Returns the wall seconds."""
    threads = max(1, cpu_cores() // len(argvs))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    processes = [subprocess.Popen([sys.executable, str(PROJECT / "train.py"), *argv], env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for argv in argvs]
    relays = [threading.Thread(target=_relay, args=(p, k), daemon=True) for k, p in enumerate(processes)]
    for relay in relays:
        relay.start()
    try:
        codes = [p.wait() for p in processes]
    except KeyboardInterrupt:
        for p in processes:
            p.terminate()
        raise
    for relay in relays:
        relay.join()
    failed = [k for k, code in enumerate(codes) if code != 0]
    if failed:
        raise ChildProcessError(f"job(s) {failed} failed (exit codes {[codes[k] for k in failed]}); see their output above. "
                           "Rerun the same command to resume.")
    return time.perf_counter() - started


def _relay(process: subprocess.Popen, k: int) -> None:
    for line in process.stdout:
        sys.stdout.write(f"[job {k}] {line}")
        sys.stdout.flush()


def pin_devices(argvs: list[list[str]], devices: list[str]) -> list[list[str]]:
    """Each job's arguments with its own device (later flags win in argparse): job k on
    ``devices[k % len(devices)]``, so 8 jobs on 4 GPUs put two on each."""
    return [[*argv, "--device", devices[k % len(devices)]] for k, argv in enumerate(argvs)]


def split(items: list, jobs: int) -> list[list]:
    """Round-robin shares: fold 0, 2, 4 to job 0 and 1, 3 to job 1 for 5 folds and 2 jobs."""
    return [share for share in (items[k::jobs] for k in range(jobs)) if share]
