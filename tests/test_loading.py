"""Feeding the training step: the sampler, loader workers, and augmentation on the device."""
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from model.device import decode_threads
from model.training.augment import DeviceLoader
from model.training.config import build_config
from model.training.dataset import EpochSampler, ImageCache, plan_cutmix
from model.training.engine import resolve_augment, resolve_workers
from model.training.experiment import train
from model.training.parallel import workers_per_job
from tests.helpers import CLA_TASK, TEST_BACKBONE, TEST_SIZE, make_cla_data

TINY = dict(backbone=TEST_BACKBONE, pretrained="none", img_size=TEST_SIZE, epochs=2, batch_size=8, n_folds=2,
            checkpoint_every=0, folds="0")


@pytest.fixture(scope="module")
def cla_data(tmp_path_factory):
    return make_cla_data(tmp_path_factory.mktemp("cla"), per_class=4)


def oof_of(tmp_path, data, name, **extra):
    cfg = build_config(CLA_TASK, overrides={"data": str(data), "out": str(tmp_path / name),
                                            "folds_dir": str(tmp_path / "folds"), **TINY, **extra})
    train(CLA_TASK, cfg)
    return pd.read_csv(tmp_path / name / "oof.csv").filter(like="p_").dropna().to_numpy()


def test_loader_workers_do_not_change_the_result(tmp_path, cla_data):
    """The augmentation's randomness travels with the sampler's indices, not with the worker processes."""
    inline = oof_of(tmp_path, cla_data, "w0", workers=0, augment="cpu")
    np.testing.assert_array_equal(oof_of(tmp_path, cla_data, "w2", workers=2, augment="cpu"), inline)


def test_training_with_device_augmentation_runs_and_repeats(tmp_path, cla_data):
    a = oof_of(tmp_path, cla_data, "a", augment="device")
    np.testing.assert_array_equal(oof_of(tmp_path, cla_data, "b", augment="device"), a)
    assert not np.allclose(a, oof_of(tmp_path, cla_data, "c", augment="cpu", workers=0))  # another pipeline


def test_the_sampler_is_seeded_by_epoch_and_weighted_when_asked():
    sampler = EpochSampler(10, 8, seed=1, fold=0)
    first = list(sampler)
    assert len(first) == 8 and len({i for _, i in first}) == 8 and len({s for s, _ in first}) == 8
    assert list(sampler) == first
    sampler.set_epoch(2)
    assert list(sampler) != first
    weighted = EpochSampler(3, 3000, seed=0, fold=0, weights=np.array([1.0, 0.0, 3.0]))
    counts = np.bincount([i for _, i in weighted], minlength=3)
    assert counts[1] == 0 and 2.5 < counts[2] / counts[0] < 3.5


def cache_of(n=4, size=40):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)
    boxes = [np.array([[0.2, 0.2, 0.5, 0.6]], np.float32)] * n
    return ImageCache(train, train[:, :32, :32], boxes)


def test_device_augmentation_without_augmenting_is_a_flip_and_a_resize():
    cache = cache_of()
    targets = np.eye(4, dtype=np.float32)
    loader = DeviceLoader(cache, targets, np.ones_like(targets), EpochSampler(4, 4, 0, 0), 4, 40, strength=0.0,
                          cutmix_p=0.0, device=torch.device("cpu"))
    rng = np.random.default_rng(3)
    flips = np.random.default_rng(3).random(4) < 0.5
    images, got_targets, _ = loader.batch(rng, np.arange(4))
    expected = torch.from_numpy(cache.train).permute(0, 3, 1, 2).float()
    expected[torch.from_numpy(flips)] = expected[torch.from_numpy(flips)].flip(3)
    assert torch.allclose(images, expected, atol=1e-3) and torch.equal(got_targets, torch.from_numpy(targets))
    smaller = DeviceLoader(cache, targets, np.ones_like(targets), EpochSampler(4, 4, 0, 0), 4, 20, 0.0, 0.0,
                           torch.device("cpu")).batch(np.random.default_rng(3), np.arange(4))[0]
    assert smaller.shape == (4, 3, 20, 20)
    assert torch.allclose(smaller, F.interpolate(expected, size=20, mode="bilinear", align_corners=False), atol=1e-3)


def test_device_cutmix_pastes_the_planned_lesion_and_mixes_the_labels():
    cache = cache_of(n=2)
    targets = np.eye(2, dtype=np.float32)
    loader = DeviceLoader(cache, targets, np.ones_like(targets), EpochSampler(2, 2, 0, 0), 2, 40, 0.0, 1.0,
                          torch.device("cpu"))
    images = loader.images[torch.tensor([0, 1])].float()
    mixed_targets, masks = loader.targets.clone(), loader.masks.clone()
    loader._cutmix(np.random.default_rng(7), images, np.array([0, 1]), mixed_targets, masks)
    rng = np.random.default_rng(7)
    rng.random()
    j = int(rng.integers(2))
    (y0, y1, x0, x1), (top, left), weight = plan_cutmix(cache.boxes[0], cache.boxes[j], 40, rng)
    assert torch.equal(images[0, :, top:top + y1 - y0, left:left + x1 - x0],
                       torch.from_numpy(cache.train[j, y0:y1, x0:x1]).permute(2, 0, 1).float())
    assert mixed_targets[0].sum() == pytest.approx(1.0) and mixed_targets[0, j] >= weight - 1e-6


def test_workers_and_augmentation_place_follow_the_device(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert resolve_workers(-1, gpu) == 15 and resolve_workers(-1, cpu) == 1 and resolve_workers(3, gpu) == 3
    assert decode_threads(-1, gpu) == 15 and decode_threads(-1, cpu) == 4 and decode_threads(2, gpu) == 2
    assert workers_per_job(-1, 2) == 7 and workers_per_job(0, 2) == 0
    cfg = build_config(CLA_TASK)
    assert resolve_augment(cfg, cache_of(), cpu) == "cpu"
    monkeypatch.setattr("model.training.engine.fits_on_device", lambda cache, device: True)
    assert resolve_augment(cfg, cache_of(), gpu) == "device"
    monkeypatch.setattr("model.training.engine.fits_on_device", lambda cache, device: False)
    assert resolve_augment(cfg, cache_of(), gpu) == "cpu"
    assert resolve_augment(build_config(CLA_TASK, overrides={"augment": "device"}), cache_of(), cpu) == "device"


@pytest.mark.slow
def test_folds_side_by_side_match_one_process(tmp_path, cla_data):
    """--jobs 2 trains the folds in two processes into one run folder; the result is the same as one process
    with the same number of threads per fold (the thread count changes float sums)."""
    from model.training.cli import main
    from model.device import cpu_cores
    flags = ["--data", str(cla_data), "--backbone", TEST_BACKBONE, "--img-size", str(TEST_SIZE), "--epochs", "2",
             "--batch-size", "8", "--workers", "0", "--set", "pretrained=none", "--set", "n_folds=2",
             "--set", "checkpoint_every=0", "--set", f"folds_dir={tmp_path / 'folds'}"]
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, cpu_cores() // 2))
    try:
        assert main([*flags, "--task", CLA_TASK.source, "--out", str(tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(threads)
    assert main([*flags, "--task", CLA_TASK.source, "--out", str(tmp_path / "two"), "--jobs", "2"]) == 0
    one, two = (pd.read_csv(tmp_path / name / "oof.csv") for name in ("one", "two"))
    assert two["fold"].nunique() == 2 and (tmp_path / "two" / "fold1" / "done.json").is_file()
    np.testing.assert_allclose(two.filter(like="p_").to_numpy(), one.filter(like="p_").to_numpy(), atol=1e-6)


@pytest.mark.slow
def test_side_by_side_jobs_report_user_errors_as_messages(tmp_path, capsys):
    """No data, or a job that fails, is a one-line error with exit 2, not a traceback."""
    from model.training.cli import main
    from model.training.parallel import run_jobs
    assert main(["--task", CLA_TASK.source, "--jobs", "2"]) == 2
    assert "no training data given" in capsys.readouterr().err
    with pytest.raises(OSError, match=r"job\(s\) \[0\] failed \(exit codes \[2\]\)"):
        run_jobs([["--task", CLA_TASK.source, "--data", str(tmp_path / "absent")]])


def test_gray_turns_an_image_into_its_weighted_mean_on_both_pipelines():
    from model.training.dataset import GRAY_WEIGHTS, build_augmentation
    cache = cache_of(n=2)
    targets = np.eye(2, dtype=np.float32)
    loader = DeviceLoader(cache, targets, np.ones_like(targets), EpochSampler(2, 2, 0, 0), 2, 40, 0.0, 0.0,
                          torch.device("cpu"), gray_p=1.0)
    images = loader.batch(np.random.default_rng(0), np.arange(2))[0]
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 1], images[:, 2])
    source = torch.from_numpy(cache.train).permute(0, 3, 1, 2).float()
    luma = (source * torch.tensor(GRAY_WEIGHTS).view(1, 3, 1, 1)).sum(1)
    assert all(torch.allclose(images[i, 0], luma[i], atol=1e-3) or torch.allclose(images[i, 0], luma[i].flip(-1), atol=1e-3)
               for i in range(2))
    cpu = build_augmentation(40, 0.0, gray_p=1.0)(image=cache.train[0])["image"].astype(np.float32)
    assert (cpu[..., 0] == cpu[..., 1]).all() and (cpu[..., 1] == cpu[..., 2]).all()
    reference = (cache.train[0].astype(np.float32) * np.array(GRAY_WEIGHTS)).sum(-1)
    assert min(np.abs(cpu[..., 0] - reference).max(), np.abs(cpu[..., 0] - reference[:, ::-1]).max()) <= 1.0
    colour = DeviceLoader(cache, targets, np.ones_like(targets), EpochSampler(2, 2, 0, 0), 2, 40, 0.0, 0.0,
                          torch.device("cpu")).batch(np.random.default_rng(0), np.arange(2))[0]
    assert not torch.equal(colour[:, 0], colour[:, 1])
