"""``python -m train_fea``: the four BI-RADS features (tasks/birads-fea.yaml) with the shared training CLI."""
import sys
from pathlib import Path

from model.training.cli import main

TASK = Path(__file__).resolve().parents[1] / "tasks" / "birads-fea.yaml"

sys.exit(main(default_task=TASK, prog="python -m train_fea"))
