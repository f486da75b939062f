import dataclasses

import optuna
import pytest
import yaml

from model.training.cli import main as cli_main
from model.training.config import build_config
from model.training.experiment import train
from model.training.tune import tune
from tests.helpers import CLA_TASK, FEA_TASK, TEST_BACKBONE, TEST_SIZE, make_cla_data, make_fea_data

SPACE = {"lr": {"low": 1e-4, "high": 1e-2, "log": True}, "label_smoothing": {"low": 0.0, "high": 0.2}}


def base_config(task, tmp_path, data):
    return build_config(task, overrides=dict(data=str(data), folds="0", backbone=TEST_BACKBONE, pretrained="none",
                                             img_size=TEST_SIZE, epochs=2, batch_size=8, n_folds=2, workers=0, checkpoint_every=0,
                                             folds_dir=str(tmp_path / "folds")))


def write_space(tmp_path, space=SPACE):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


@pytest.mark.slow
def test_study_runs_resumes_and_exports_a_config_that_trains(tmp_path):
    data = make_cla_data(tmp_path / "data", per_class=3)
    space, out = write_space(tmp_path), tmp_path / "study"
    first = tune(CLA_TASK, base_config(CLA_TASK, tmp_path, data), 2, None, None, "s", space, out)
    assert first["trials"] == {"COMPLETE": 2} and first["new_trials"] == 2
    assert (out / "study.db").is_file() and (out / "trial-0/fold0/done.json").is_file()
    second = tune(CLA_TASK, base_config(CLA_TASK, tmp_path, data), 1, None, None, "s", space, out)
    assert second["trials"] == {"COMPLETE": 3} and second["new_trials"] == 1
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{out / 'study.db'}")
    assert len({t.params["lr"] for t in study.trials}) == 3          # no trial repeated
    best = build_config(CLA_TASK, out / "best_config.yaml")
    assert best.lr == pytest.approx(study.best_trial.params["lr"]) and best.folds == "all"
    assert best.data == str(data)
    header = (out / "best_config.yaml").read_text().splitlines()[1]
    assert f"--config {out / 'best_config.yaml'} --out {out / 'best'}" in header  # trains as suggested, even twice
    metrics = train(CLA_TASK, dataclasses.replace(best, out=str(tmp_path / "from_best"), epochs=1))
    assert metrics["folds_done"] == [0, 1]


def test_a_trial_below_the_median_is_pruned_and_a_failure_is_recorded(tmp_path):
    data = make_fea_data(tmp_path / "data", n=12)
    space = write_space(tmp_path, {"lr": {"choices": [0.001, 1.0e6]},
                                   "label_weights": {"low": 0.5, "high": 2.0, "per_label": True}})
    storage = f"journal:{tmp_path / 'study.log'}"
    study = optuna.create_study(study_name="p", storage=tune_storage(storage), direction="maximize")
    perfect = {"lr": 0.001, **{f"label_weights.{h}": 1.0 for h in FEA_TASK.heads}}
    distributions = {"lr": optuna.distributions.CategoricalDistribution([0.001, 1.0e6]),
                     **{f"label_weights.{h}": optuna.distributions.FloatDistribution(0.5, 2.0)
                        for h in FEA_TASK.heads}}
    for _ in range(2):  # two finished trials that scored 1.0 at every step: the median to beat
        study.add_trial(optuna.trial.create_trial(params=perfect, distributions=distributions, value=1.0,
                                                  intermediate_values={0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0}))
    study.enqueue_trial({"lr": 0.001})
    study.enqueue_trial({"lr": 1.0e6})                               # diverges: loss is not finite
    cfg = dataclasses.replace(base_config(FEA_TASK, tmp_path, data), epochs=4)  # the pruner waits 2 steps
    summary = tune(FEA_TASK, cfg, 2, None, storage, "p", space, tmp_path / "o")
    assert summary["trials"] == {"COMPLETE": 2, "PRUNED": 1, "FAIL": 1}
    (reason,) = summary["failures"].values()
    assert reason.startswith("FloatingPointError: fold 0, epoch 1: ")


def tune_storage(url):
    from model.training.tune import open_storage
    return open_storage(url)


def test_cli_rejects_an_unknown_key_in_the_space(tmp_path, capsys):
    data = make_cla_data(tmp_path / "data", per_class=2)
    space = write_space(tmp_path, {"learning_rate": {"low": 0.1, "high": 1.0}})
    assert cli_main(["tune", "--task", "tasks/birads-cla.yaml", "--data", str(data), "--space", str(space),
                     "--trials", "1"]) == 2
    assert "unknown config key 'learning_rate'" in capsys.readouterr().err


def test_a_value_given_on_the_command_line_is_not_searched(tmp_path):
    data = make_cla_data(tmp_path / "data", per_class=2)
    space = write_space(tmp_path, {**SPACE, "epochs": {"choices": [5, 6]}})
    args = ["--data", str(data), "--space", str(space), "--trials", "1", "--epochs", "1", "--out", str(tmp_path / "o"),
            "--backbone", TEST_BACKBONE, "--img-size", str(TEST_SIZE), "--workers", "0",
            "--set", "pretrained=none", "--set", "n_folds=2", "--set", f"folds_dir={tmp_path / 'folds'}"]
    assert cli_main(["tune", "--task", "tasks/birads-cla.yaml", *args]) == 0
    study = optuna.load_study(study_name=f"cla-{data.name}", storage=f"sqlite:///{tmp_path / 'o/study.db'}")
    (trial,) = study.trials
    assert "epochs" not in trial.params and set(trial.params) == {"lr", "label_smoothing"}
    assert build_config(CLA_TASK, tmp_path / "o/best_config.yaml").epochs == 1


@pytest.mark.slow
def test_trials_side_by_side_share_one_journal(tmp_path, capsys):
    """A device list of two (as cuda:0,1 would be): two processes, one trial each on one journal study;
    their samplers differ and the parent summarises the study with trials per hour."""
    data = make_cla_data(tmp_path / "data", per_class=2)
    args = ["--data", str(data), "--space", str(write_space(tmp_path)), "--trials", "2", "--device", "cpu,cpu", "--epochs", "1",
            "--out", str(tmp_path / "o"), "--backbone", TEST_BACKBONE, "--img-size", str(TEST_SIZE), "--workers", "0",
            "--set", "pretrained=none", "--set", "n_folds=2", "--set", f"folds_dir={tmp_path / 'folds'}"]
    assert cli_main(["tune", "--task", "tasks/birads-cla.yaml", *args]) == 0
    study = optuna.load_study(study_name=f"cla-{data.name}", storage=tune_storage(f"journal:{tmp_path / 'o/study.journal'}"))
    assert len(study.trials) == 2 and all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert study.trials[0].params != study.trials[1].params
    assert {t.user_attrs["run_dir"] for t in study.trials} == {str(tmp_path / "o" / f"trial-{n}") for n in (0, 1)}
    out = capsys.readouterr().out
    assert "[job 0]" in out and "[job 1]" in out and "trials per hour" in out
    assert (tmp_path / "o" / "best_config.yaml").is_file()


def test_a_study_resumed_after_the_space_grew_reports_what_its_best_trial_ran(tmp_path):
    from model.training.tune import best_config
    base = build_config(CLA_TASK, overrides={"input_norm": "image", "lr": 1e-3})
    space = {"lr": SPACE["lr"], "input_norm": {"choices": ["backbone", "image"]}}
    run_dir = tmp_path / "trial-0"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("lr: 0.002\nlabel_smoothing: 0.05\n")   # written before input_norm existed

    def old_trial(**attrs):
        return optuna.trial.create_trial(params={"lr": 0.002}, distributions={"lr": optuna.distributions.FloatDistribution(
            1e-4, 1e-2, log=True)}, value=0.5, user_attrs=attrs)
    cfg = best_config(base, space, old_trial(run_dir=str(run_dir)), CLA_TASK)
    assert cfg.lr == 0.002 and cfg.input_norm == "backbone"           # what the trial ran, not the base's image
    assert best_config(base, space, old_trial(), CLA_TASK).input_norm == "backbone"
    searched = optuna.trial.create_trial(params={"lr": 0.002, "input_norm": "image"}, distributions={
        "lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
        "input_norm": optuna.distributions.CategoricalDistribution(["backbone", "image"])}, value=0.5)
    assert best_config(dataclasses.replace(base, input_norm="backbone"), space, searched, CLA_TASK).input_norm == "image"


WORKER = """
import os, sys, time
from pathlib import Path
sys.path.insert(0, {project!r})
import model.kinds
from model.kinds import SINGLE_LABEL
from model.training.tune import SPACES, load_space, suggest, worker_study
space = load_space(SPACES / "single-label.yaml", SINGLE_LABEL)
study, worker = worker_study({url!r}, {study!r}, 42, None)     # a worker per machine: no --jobs index
Path({ready!r} + str(os.getpid())).touch()
go = Path({go!r})
while not go.exists():          # every worker has joined the study, none has run a trial: they start together
    time.sleep(0.01)

def objective(trial):
    for key, value in worker.items():
        trial.set_user_attr(key, value)
    suggest(trial, space, ("a", "b"))
    time.sleep(0.05)
    return 0.5

study.optimize(objective, n_trials={trials})
"""


def tuning_workers_alike(url: str, study: str, folder, workers: int = 2, trials: int = 4) -> list:
    """Start ``workers`` tuning workers at once on one study, as separate machines would (no --jobs), each
    sampling with the harness's own worker_study (its seeding, sampler and open_storage) over the real
    search space and a cheap objective; returns the study's trials."""
    import os
    import subprocess
    import sys
    import time

    from model.training.tune import open_storage
    from tests.helpers import PROJECT
    go = folder / "go"
    script = WORKER.format(project=str(PROJECT), go=str(go), ready=str(folder / "ready-"), url=url, study=study,
                           trials=trials)
    processes = [subprocess.Popen([sys.executable, "-c", script], cwd=PROJECT, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
                 for _ in range(workers)]
    deadline = time.monotonic() + 120
    while len(list(folder.glob("ready-*"))) < workers and time.monotonic() < deadline:
        if any(p.poll() is not None for p in processes):
            break
        time.sleep(0.05)
    go.touch()
    for process in processes:
        out, _ = process.communicate(timeout=300)
        assert process.returncode == 0, out
    return optuna.load_study(study_name=study, storage=open_storage(url)).trials


def test_tuning_workers_started_together_on_one_journal_never_repeat_each_other(tmp_path):
    trials = tuning_workers_alike(f"journal:{tmp_path / 'study.journal'}", "alike", tmp_path)
    assert len(trials) == 8
    proposals = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(proposals)) == len(proposals), proposals
    seeds = {t.user_attrs["worker"]: t.user_attrs["sampler_seed"] for t in trials}
    assert len(seeds) == 2 and len(set(seeds.values())) == 2          # each worker recorded its own seed
