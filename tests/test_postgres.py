"""Tuning on a real PostgreSQL: two `train.py tune` workers in two processes share one study, and a worker
killed mid-trial leaves it usable (its trial is failed as stale and retried, as Optuna's heartbeat does).

.ci/run starts a throwaway server on loopback and sets HARNESS_TEST_POSTGRES; without it these tests skip."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import optuna
import pytest

from tests.helpers import PROJECT, make_cla_data

URL = os.environ.get("HARNESS_TEST_POSTGRES")
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
              pytest.mark.skipif(not URL, reason="no PostgreSQL server: set HARNESS_TEST_POSTGRES (.ci/run starts one)")]
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)   # the median pruner may stop one
TINY = ["--set", "backbone=test_efficientnet", "--set", "pretrained=none", "--img-size", "32", "--epochs", "2",
        "--batch-size", "8", "--set", "n_folds=2", "--workers", "0", "--set", "checkpoint_every=0"]


def worker(tmp_path, study: str, trials: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "train.py", "tune", "--task", "tasks/birads-cla.yaml", "--data", str(tmp_path / "data"),
         "--trials", str(trials), "--storage", URL, "--study", study, "--out", str(tmp_path / "study"),
         "--set", f"folds_dir={tmp_path / 'folds'}", *TINY],
        cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"})


def running(study: str) -> int:
    try:
        loaded = optuna.load_study(study_name=study, storage=URL)
    except KeyError:
        return 0
    return len(loaded.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))


def test_two_workers_share_a_study_and_a_killed_one_leaves_it_usable(tmp_path):
    make_cla_data(tmp_path / "data", per_class=3)
    study = f"pg-{uuid.uuid4().hex[:8]}"
    first = worker(tmp_path, study, 3)
    second = worker(tmp_path, study, 3)
    deadline = time.monotonic() + 240
    while running(study) < 2 and time.monotonic() < deadline:   # both workers are inside a trial
        time.sleep(0.5)
    assert running(study) == 2, "the two workers never ran a trial at the same time"
    second.kill()
    second.wait()
    out, _ = first.communicate(timeout=600)
    assert first.returncode == 0, out
    loaded = optuna.load_study(study_name=study, storage=URL)
    states = [t.state for t in loaded.trials]
    assert sum(state in FINISHED for state in states) == 3, states              # the first worker's three
    assert states.count(optuna.trial.TrialState.RUNNING) == 1, states           # the killed worker's
    # The killed worker's trial sends no heartbeat: once it is stale it is failed and queued again.
    stale = optuna.storages.RDBStorage(
        URL, heartbeat_interval=1, grace_period=1,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2))
    time.sleep(2)
    optuna.storages.fail_stale_trials(optuna.load_study(study_name=study, storage=stale))
    loaded = optuna.load_study(study_name=study, storage=URL)
    assert [t.state for t in loaded.trials].count(optuna.trial.TrialState.FAIL) == 1
    assert [t.state for t in loaded.trials].count(optuna.trial.TrialState.WAITING) == 1
    third = worker(tmp_path, study, 1)                              # a new worker takes the retried trial
    out, _ = third.communicate(timeout=600)
    assert third.returncode == 0, out
    loaded = optuna.load_study(study_name=study, storage=URL)
    assert not loaded.get_trials(states=(optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING))
    retried = [t for t in loaded.trials
               if optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t) is not None]
    assert len(retried) == 1 and retried[0].state in FINISHED
    assert (tmp_path / "study" / "best_config.yaml").is_file()


def test_tuning_workers_started_together_on_one_server_never_repeat_each_other(tmp_path):
    from tests.test_tune import tuning_workers_alike
    trials = tuning_workers_alike(URL, f"alike-{uuid.uuid4().hex[:8]}", tmp_path)
    proposals = [tuple(sorted(t.params.items())) for t in trials]
    assert len(proposals) == 8 and len(set(proposals)) == len(proposals), proposals
    assert len({t.user_attrs["sampler_seed"] for t in trials}) == 2
