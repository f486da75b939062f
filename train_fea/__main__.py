import sys

from model.training.cli import main
from train_fea.recipe import SPEC

sys.exit(main(SPEC))
