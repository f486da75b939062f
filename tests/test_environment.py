from pathlib import Path

from model.check import check_environment, read_pins

PROJECT = Path(__file__).resolve().parents[1]


def test_environment_yml_installs_exactly_requirements_txt():
    assert check_environment(PROJECT) == []


def test_requirements_are_exact_pins():
    pins = read_pins(PROJECT / "requirements.txt")
    for needed in ("torch", "torchvision", "timm", "albumentations", "ttach", "optuna", "scikit-learn"):
        assert needed in pins
