"""Past one device: folds spread over a device list (--jobs N --device a,b), and one fold on several
processes under torchrun (DistributedDataParallel, gloo on CPU here; nccl on GPUs)."""
from __future__ import annotations

import json
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


# Each of two gloo processes trains fold 0 straight through, rank 0 keeping a copy of the resume state it
# saved after epoch 1, then trains it again in a second run folder that holds that copy: both must resume.
RESUMING_RANK = """
import json, logging, shutil, sys
from datetime import timedelta
from pathlib import Path
sys.path.insert(0, {project!r})
import numpy as np, torch, torch.distributed as dist
torch.set_num_threads(1)
import model.kinds
from model.task import load_task
from model.training import engine
from model.training.config import TrainConfig
from model.training.dataset import ImageCache

rank, out = int(sys.argv[1]), Path({out!r})
logging.basicConfig(level=logging.INFO, format="%(message)s")
dist.init_process_group("gloo", init_method=f"file://{{out / 'store'}}", rank=rank, world_size=2,
                        timeout=timedelta(seconds=60))
task = load_task(Path({project!r}) / "tasks" / "birads-cla.yaml")
n = 32   # 16 training images: 2 steps of 2 x 4 per epoch
images = np.random.default_rng(0).integers(0, 256, (n, 37, 37, 3), dtype=np.uint8)
cache = ImageCache(images, np.ascontiguousarray(images[:, :32, :32]), [np.zeros((0, 4), np.float32)] * n)
labels = np.arange(n) % len(task.heads)
targets, masks = task.kind.encode(labels, len(task.heads))
# EMA on: rank 0 validates the EMA, whose warm-up follows the step counter a resume must restore.
cfg = TrainConfig(backbone="test_efficientnet", pretrained="none", img_size=32, workers=0, device="cpu",
                  augment="cpu", precision="fp32", epochs=3, batch_size=4, checkpoint_every=0, ema_decay=0.9)
epochs = []
seed = engine.epoch_seed
engine.epoch_seed = lambda s, fold, epoch: epochs.append(epoch) or seed(s, fold, epoch)

def keep_state_after_epoch_1(epoch, score):   # rank 0 alone reports, after saving last.pt
    if epoch == 1:
        (out / "resumed" / "fold0").mkdir(parents=True)
        shutil.copy(out / "straight" / "fold0" / "last.pt", out / "resumed" / "fold0" / "last.pt")

run = lambda name, report=None: engine.train_fold(task, cfg, cache, targets, masks, labels, np.arange(n) % 2, 0,
                                                 out / name, report=report)
run("straight", keep_state_after_epoch_1)
straight, epochs[:] = list(epochs), []
summary = run("resumed")
(out / f"rank{{rank}}.json").write_text(json.dumps({{"straight": straight, "resumed": epochs, "summary": summary}}))
dist.destroy_process_group()
"""


def test_every_process_resumes_a_fold_after_the_saved_epoch_as_if_never_stopped(tmp_path):
    script = RESUMING_RANK.format(project=str(PROJECT), out=str(tmp_path))
    ranks = [subprocess.Popen([sys.executable, "-c", script, str(rank)], cwd=PROJECT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}) for rank in (0, 1)]
    outs = []
    try:
        for process in ranks:
            outs.append(process.communicate(timeout=150)[0])     # a rank that waits for the other fails
    finally:
        for process in ranks:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    for process, out in zip(ranks, outs):
        assert process.returncode == 0, out
    for rank, out in enumerate(outs):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert report["straight"] == [1, 2, 3], rank
        assert "fold 0: resuming after epoch 1" in out, (rank, out)
        assert report["resumed"] == [2, 3], (rank, out)                       # after the saved epoch, on every rank
        assert report["summary"]["epochs_run"] == 3 and report["summary"]["processes"] == 2
    straight, resumed = (tmp_path / "straight" / "fold0", tmp_path / "resumed" / "fold0")
    assert not (resumed / "last.pt").exists() and (resumed / "done.json").is_file()
    history, again = (json.loads((folder / "history.json").read_text()) for folder in (straight, resumed))
    assert [h["epoch"] for h in again] == [1, 2, 3]
    for h in (*history, *again):
        h.pop("seconds")
    # The same weights, optimizer, LR schedule and step counter (the EMA's warm-up) on both processes as
    # in the uninterrupted run: the same losses, learning rates and validation probabilities.
    np.testing.assert_allclose(pd.DataFrame(again).to_numpy(), pd.DataFrame(history).to_numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.load(resumed / "oof.npy"), np.load(straight / "oof.npy"), rtol=0, atol=1e-6)
    done = [json.loads((folder / "done.json").read_text()) for folder in (straight, resumed)]
    assert [{k: v for k, v in d.items() if k != "seconds_per_epoch"} for d in done] == [
        {k: v for k, v in done[0].items() if k != "seconds_per_epoch"}] * 2
