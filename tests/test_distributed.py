"""Past one device: folds spread over a device list (--jobs N --device a,b), and one fold on several
processes under torchrun (DistributedDataParallel, gloo on CPU here; nccl on GPUs)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from model.device import DeviceError, device_list
from model.training.distributed import ShardedSampler, World
from model.training.parallel import pin_devices
from model.training.dataset import EpochSampler
from tests.helpers import PROJECT, make_cla_data

TINY = ["--set", "backbone=test_efficientnet", "--set", "pretrained=none", "--img-size", "32", "--workers", "0",
        "--set", "n_folds=2", "--set", "checkpoint_every=0", "--set", "ema_decay=0"]


def test_a_device_list_gives_each_job_its_device_in_turn():
    assert device_list("cpu,cpu") == ["cpu", "cpu"] and device_list("cpu") == ["cpu"]
    with pytest.raises(DeviceError, match="no CUDA GPU here|has 0 GPU"):
        device_list("cuda:0,1")
    argvs = pin_devices([["--folds", str(k)] for k in range(5)], ["cuda:0", "cuda:1"])
    assert [a[-1] for a in argvs] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1", "cuda:0"]
    assert argvs[3] == ["--folds", "3", "--device", "cuda:1"]        # later flags win: the job's own device


def test_each_process_walks_its_own_share_of_the_same_epoch():
    sampler = EpochSampler(10, 8, seed=1, fold=0)
    shards = [ShardedSampler(sampler, World(rank, 2, rank)) for rank in (0, 1)]
    sampler.set_epoch(3)
    everything = list(sampler)
    parts = [list(shard) for shard in shards]
    assert [len(p) for p in parts] == [4, 4] and [len(s) for s in shards] == [4, 4]
    assert sorted(parts[0] + parts[1]) == sorted(everything)              # disjoint, nothing lost
    shards[0].set_epoch(4)
    assert list(sampler) != everything                                     # the epoch moved for every shard


def _train(tmp_path, out, *extra, launcher=(), env=None):
    command = [*launcher, "train.py", "--task", "tasks/birads-cla.yaml", "--data", str(tmp_path / "data"),
               "--out", str(tmp_path / out), "--set", f"folds_dir={tmp_path / 'folds'}", *TINY, *extra]
    return subprocess.Popen([sys.executable, *command] if not launcher else command, cwd=PROJECT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def _done(process: subprocess.Popen) -> str:
    """The output of a finished command, which must have succeeded."""
    out, _ = process.communicate(timeout=600)
    assert process.returncode == 0, out
    return out


def _oof(tmp_path, out) -> np.ndarray:
    return pd.read_csv(tmp_path / out / "oof.csv").filter(like="p_").dropna().to_numpy()


def _kill_every_process_of(marker: str) -> None:
    """SIGKILL every process whose command line names ``marker``, as a power cut would."""
    from pathlib import Path
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


@pytest.mark.slow
def test_folds_go_to_the_devices_of_a_list_into_one_run_folder(tmp_path):
    make_cla_data(tmp_path / "data", per_class=3)
    out = _done(_train(tmp_path, "run", "--epochs", "1", "--batch-size", "8", "--device", "cpu,cpu"))
    assert "2 folds in 2 jobs on cpu:" in out and "folds per hour" in out
    assert "[job 0]" in out and "[job 1]" in out
    assert len(_oof(tmp_path, "run")) == 18


TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")
# Batch norm statistics are per process under DDP (2 x 4 images here, against 8 in one process), so the
# two runs differ by that alone; everything else (the order of images, their augmentation, the averaged
# gradients) is the same. Measured on these 36 tiny images: at most 0.026, 0.008 on average.
TOLERANCE = 0.05


@pytest.mark.slow
def test_one_fold_on_two_processes_trains_resumes_after_a_kill_and_matches_one_process(tmp_path):
    make_cla_data(tmp_path / "data", per_class=6)
    _done(_train(tmp_path, "one", "--folds", "0", "--epochs", "12", "--batch-size", "8"))
    # Two processes of 4 images per step: the same global batch of 8. Killed after its first epoch...
    ddp = _train(tmp_path, "ddp", "--folds", "0", "--epochs", "12", "--batch-size", "4", launcher=TORCHRUN)
    deadline = time.monotonic() + 300
    while not (tmp_path / "ddp/fold0/last.pt").is_file() and time.monotonic() < deadline and ddp.poll() is None:
        time.sleep(0.02)
    assert (tmp_path / "ddp/fold0/last.pt").is_file(), ddp.communicate()[0]
    _kill_every_process_of(str(tmp_path / "ddp"))   # torchrun and its workers (in sessions of their own)
    ddp.wait()
    assert not (tmp_path / "ddp/fold0/done.json").exists()
    # ... and resumed by the same command.
    out = _done(_train(tmp_path, "ddp", "--folds", "0", "--epochs", "12", "--batch-size", "4", launcher=TORCHRUN))
    log = (tmp_path / "ddp/train.log").read_text()
    assert "fold 0: resuming after epoch" in log
    assert "fold 0: 2 processes (gloo), 4 images per process per step, 8 globally" in log
    assert out.count("OOF cla") == 1                                      # rank 0 alone reports
    # A run folder like any other: the same files, and an OOF close to one process's.
    for name in ("fold0/best.pt", "fold0/done.json", "fold0/history.json", "samples.csv", "metrics.json"):
        assert (tmp_path / "ddp" / name).is_file(), name
    difference = np.abs(_oof(tmp_path, "ddp") - _oof(tmp_path, "one")).max()
    assert difference < TOLERANCE, difference
    # The resumed fold repeats an uninterrupted one on two processes.
    _done(_train(tmp_path, "straight", "--folds", "0", "--epochs", "12", "--batch-size", "4", launcher=TORCHRUN))
    np.testing.assert_allclose(_oof(tmp_path, "ddp"), _oof(tmp_path, "straight"), atol=1e-6)
