"""The files a kind writes and model.score reads back, owned by the kinds (which import these modules) and
never by the core: ``tables`` holds the one-row-per-image CSVs of the classification kinds, ``masks`` the
segmentation outputs (a folder of mask PNGs, an RLE CSV, a summary CSV). What they share is here: the
scoring error, one task's score, and CSV reading.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ScoreError

__all__ = ["ScoreError", "TaskScore", "csv_columns", "missing_output", "read_csv"]


@dataclass
class TaskScore:
    """One task's scores as model.score reports them, with what was wrong in its files."""

    task: str
    scores: dict
    problems: list[str] = field(default_factory=list)
    missing: bool = False


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error) as e:
        raise ScoreError(f"{path}: cannot read as a UTF-8 CSV ({e})") from e
    except OSError as e:
        raise ScoreError(f"{path}: cannot be read ({e.strerror or e})") from e
    if not rows:
        raise ScoreError(f"{path}: empty file")
    return [c.strip() for c in rows[0]], rows[1:]


def csv_columns(header, rows, names, path: Path) -> dict[str, list[str]]:
    missing = [n for n in names if n not in header]
    if missing:
        raise ScoreError(f"{path}: header {header} lacks {missing}")
    return {n: [r[header.index(n)] if header.index(n) < len(r) else "" for r in rows] for n in names}


def missing_output(task, pred: Path) -> TaskScore:
    """A task whose ground truth is there but whose prediction is not: scored 0, and flagged."""
    return TaskScore(task.name, {"score": 0.0}, [f"{pred}: missing, task scored 0"], missing=True)
