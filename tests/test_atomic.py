"""Outputs are written beside the target and renamed: a crash mid-write leaves the old file whole."""
from pathlib import Path

import numpy as np
import pytest

import model.atomic as atomic
from model.atomic import write_json
from model.outputs.tables import write_predictions
from model.predict import TestImage
from tests.helpers import CLA_TASK


def crash_mid_write(monkeypatch):
    def partial(self, text, encoding=None):
        with open(self, "w", encoding=encoding) as f:
            f.write(text[: len(text) // 2])
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(atomic.Path, "write_text", partial)


def test_a_csv_is_never_left_half_written(tmp_path, monkeypatch):
    target = tmp_path / "cla_pre.csv"
    target.write_text("id,label\n1,3\n")
    crash_mid_write(monkeypatch)
    with pytest.raises(OSError):
        write_predictions(target, CLA_TASK, [TestImage(i, Path(f"{i}.png")) for i in range(1, 4)],
                          np.array([0, 1, 2]), np.zeros((3, 6)))
    assert target.read_text() == "id,label\n1,3\n" and [p.name for p in tmp_path.iterdir()] == ["cla_pre.csv"]


def test_a_json_is_never_left_half_written(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    write_json(target, {"score": 0.5})
    crash_mid_write(monkeypatch)
    with pytest.raises(OSError):
        write_json(target, {"score": 0.9, "more": list(range(100))})
    assert target.read_text() == '{\n  "score": 0.5\n}\n' and len(list(tmp_path.iterdir())) == 1
