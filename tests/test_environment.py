import re
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parents[1]


def test_environment_yml_installs_exactly_requirements_txt():
    env = yaml.safe_load((PROJECT / "environment.yml").read_text())
    deps = env["dependencies"]
    assert "python=3.11" in deps and "pip" in deps
    pip_sections = [d["pip"] for d in deps if isinstance(d, dict)]
    assert pip_sections == [["-r requirements.txt"]]


def test_requirements_are_exact_pins():
    lines = [ln.strip() for ln in (PROJECT / "requirements.txt").read_text().splitlines()]
    pins = [ln for ln in lines if ln and not ln.startswith("#")]
    assert pins and all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][A-Za-z0-9.+\-]*", p) for p in pins), pins
    names = [p.split("==")[0].lower() for p in pins]
    for needed in ("torch", "torchvision", "timm", "albumentations", "ttach", "optuna", "scikit-learn"):
        assert needed in names
