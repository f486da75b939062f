"""``python -m train_cls``: the BI-RADS category task (tasks/birads-cla.yaml) with the shared training CLI."""
import sys
from pathlib import Path

from model.training.cli import main

TASK = Path(__file__).resolve().parents[1] / "tasks" / "birads-cla.yaml"

sys.exit(main(default_task=TASK, prog="python -m train_cls"))
