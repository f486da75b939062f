import sys

from model.training.cli import main
from train_cls.recipe import SPEC

sys.exit(main(SPEC))
