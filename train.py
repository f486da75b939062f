"""Train, export and tune a k-fold ensemble for any task file.

    python train.py --task tasks/examples/busi.yaml --data ../shared/data/busi     train (resumes when rerun)
    python train.py export runs/busi-busi                                          freeze it into model/weights/busi/
    python train.py tune --task FILE --data DIR --trials 30                        Optuna study
    python train.py --task FILE --show-config                                      every recipe key with its meaning
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from model.training.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
