"""The interface every task kind implements, in three parts split by who calls them, and what most kinds
share.

A kind decides everything that differs between kinds of task; the rest of the code (task files, readers,
folds, the training engine, bundles, prediction, the ONNX path, scoring) calls these methods and never asks
which kind it holds. The parts:

* ``TaskFileKind``, what ``model.task`` reads: the heads (``heads_key``, ``read_heads``, ``heads_value``),
  the metrics, the output formats and their default file and columns, and the recipe keys only this kind
  reads (``recipe_keys``: ``model.training.config`` takes them from here);
* ``InferenceKind``, what run.py, bundles, the ONNX path and ``model.score`` need: what the network emits
  (``output_block``, ``probabilities``, ``deaugment``, ``crop_border``), the decision rule (``neutral_rule``,
  ``check_rule``, ``decide``), ``scores`` and ``details``, and the outputs (``write_outputs``,
  ``validate_output``, ``score_outputs``, ``fill_failed``);
* ``TrainingKind``, what the engine needs: the network to build (``network_spec``), the truth and its storage
  in a run folder, targets and loss, sampling, the prior, fold stratification, the rule search's grid and
  check, the baseline beside every run and the plots.

Each method without a shared default is abstract: a kind class that lacks one fails when it is registered,
which happens when its module is imported (``model.registry.register``). A new kind is a module with a
``Kind`` subclass under ``@register``, its import in ``model/kinds/__init__.py`` and its tuning search space
(``model/training/search_spaces/<kind>.yaml``).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from ..errors import TaskFileError
from ..manifest import numbers
from ..task import default_csv_name

CHECK_SPLITS = 5


class TaskFileKind(ABC):
    """What a task file of this kind says: its heads, metrics, outputs and recipe keys."""

    name = ""
    heads_key, min_heads = "classes", 1
    metrics: tuple[str, ...] = ()
    default_metric = ""
    output_values: tuple[str, ...] = ()
    recipe_keys: frozenset = frozenset()       # recipe keys that only this kind (and others claiming them) reads
    defaults: dict = {}                        # recipe defaults of this kind
    label_layout = ""                          # how a reader finds labels: class (one column of class
                                               # values), columns (one 0/1/empty column per label) or mask
    binary_positive = False                    # whether a two-head task names a positive: class

    def read_heads(self, value, where: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
        """(head names, mask values) from the task file's ``heads_key`` value: a list of names here."""
        if not isinstance(value, list) or len(value) < self.min_heads:
            raise TaskFileError(f"{where}: {self.heads_key}: required, a list of at least {self.min_heads} names")
        if not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
            raise TaskFileError(f"{where}: {self.heads_key}: each name must be a string ({value!r})")
        names = tuple(str(v) for v in value)
        if any(not n.strip() for n in names) or len(set(names)) != len(names):
            raise TaskFileError(f"{where}: {self.heads_key}: names must be non-empty and distinct ({list(names)})")
        return names, ()

    def heads_value(self, task):
        """The ``heads_key`` value a manifest stores (read_heads reads it back)."""
        return list(task.heads)

    def default_output_file(self, name: str, values: str) -> str:
        return default_csv_name(name)

    def output_suffix(self, values: str) -> str:
        """How the output's file name ends: ".csv", another file type, or "" for a folder (of masks)."""
        return ".csv"

    @abstractmethod
    def output_columns(self, heads, values: str) -> list[str]:
        """The output's default columns after the id, for output values ``values``."""


class InferenceKind(ABC):
    """What run.py, a bundle, the ONNX path and model.score need of a kind."""

    crop_border = True                         # inputs: crop the dark frame before resizing (model.images)
    predict_dtype = np.float64                 # run.py's probabilities
    failed_note = "predicted from the class prior"

    def output_block(self, task, img_size: int) -> dict:
        """What the network emits, as the manifest states it (MONAI's network_data_format.outputs)."""
        return {"type": "probabilities", "channels": len(task.heads), "spatial_shape": [],
                "channel_names": list(task.heads)}

    @abstractmethod
    def probabilities(self, logits):
        """The network's raw outputs as probabilities (a torch tensor in, one out)."""

    def deaugment(self, transform, outputs):
        """A TTA view's outputs in the original image's frame: an image-level output does not move."""
        return transform.deaugment_label(outputs)

    def combine(self, stacked):
        """One output per image from the members' (folds', or TTA views') stacked outputs: their mean."""
        return stacked.mean(0)

    @abstractmethod
    def neutral_rule(self, n_heads: int) -> dict:
        """The decision rule that changes nothing (argmax, 0.5): the rule a tuned one must beat."""

    def check_rule(self, rule, n_heads: int) -> bool:
        """Whether a manifest's ``decision`` has this kind's keys, each with the right number of numbers."""
        neutral = self.neutral_rule(n_heads)
        return (isinstance(rule, dict) and set(rule) == set(neutral)
                and all(numbers(rule[k], len(v)) for k, v in neutral.items()))

    def onnx_blocker(self, task) -> str | None:
        """Why this kind's fold ensemble cannot run as an ONNX graph (run.py then uses PyTorch), or None."""
        return None

    def rule_free(self, task) -> str | None:
        """Why the task's metric does not depend on the decision rule (no rule is tuned then), or None."""
        return "AUC does not depend on the decision rule" if task.metric == "auc" else None

    @abstractmethod
    def decide(self, probs: np.ndarray, rule: dict | None = None) -> np.ndarray:
        """The predictions that ``rule`` (the neutral rule when None) makes of ``probs``."""

    @abstractmethod
    def scores(self, task, labels, predicted, probs=None) -> dict:
        """``score`` (the task's metric) and its parts."""

    @abstractmethod
    def details(self, task, labels, predicted, probs) -> dict:
        """What a report adds to the scores (per class, confusion, ...)."""

    @abstractmethod
    def write_outputs(self, task, out_dir: Path, images, prediction, rule: dict, id_mode: str | None = None) -> Path:
        """Write the task's output for ``images`` into ``out_dir``; its path."""

    @abstractmethod
    def validate_output(self, path: Path, task, images) -> list[str]:
        """What run.py --check finds wrong with a written output."""

    @abstractmethod
    def score_outputs(self, task, pred_dir: Path, gt_dir: Path):
        """model.score's result for this task, or None when ``gt_dir`` holds no ground truth for it."""

    def truth_location(self, task) -> str:
        """Where model.score looks for the task's ground truth under GT_DIR (for messages)."""
        return task.gt_file

    def fill_failed(self, probs: np.ndarray, index: int, prior: np.ndarray) -> None:
        """The prediction of an image that could not be decoded: the class prior."""
        probs[index] = prior


class TrainingKind(ABC):
    """What the training engine, the experiment, tuning and the reports need of a kind."""

    prob_dtype = np.float64                    # out-of-fold probabilities, as stored
    rule_grid: dict = {}                       # rule key -> the values the rule search tries
    box_targets = False                        # the loader's targets are padded boxes that move with the image

    def training_outputs(self, net, images, targets):
        """What the training loss is computed from: the network's outputs for the batch (a detector takes the
        targets too and returns its own loss)."""
        return net(images)

    def network_spec(self, cfg, n_heads: int) -> dict:
        """What rebuilds the network: ``architecture`` (model.network) and its number of ``outputs``."""
        return {"architecture": "classifier", "outputs": n_heads}

    def check_config(self, cfg) -> None:
        """Raise ValueError for a recipe this kind cannot train."""

    def truth(self, samples, cache):
        """What predictions are scored against: here the readers' labels, (N, label columns)."""
        return np.array([s.labels for s in samples])

    def save_truth(self, run_dir, truth) -> None:
        """Keep what samples.csv cannot hold in the run folder (nothing, for labels)."""

    def load_truth(self, run_dir, frame, task):
        """The truth of a run folder's images, in samples.csv's order."""
        return frame[self.label_columns(task.heads)].to_numpy()

    @abstractmethod
    def label_columns(self, heads) -> list[str]:
        """samples.csv's label columns."""

    def oof_columns(self, task, probs: np.ndarray) -> dict:
        """oof.csv's probability columns."""
        return {f"p_{head}": probs[:, j] for j, head in enumerate(task.heads)}

    def head_counts(self, labels: np.ndarray, n_heads: int) -> np.ndarray:
        """(heads,) how many training images show each head (label 1 of a 0/1 column)."""
        return (np.asarray(labels).reshape(len(labels), n_heads) == 1).sum(0)

    @abstractmethod
    def encode(self, labels: np.ndarray, n_heads: int) -> tuple[np.ndarray, np.ndarray]:
        """(targets, masks) for the loss."""

    @abstractmethod
    def make_loss(self, cfg, targets: np.ndarray, masks: np.ndarray):
        """The training loss (an nn.Module) for these training targets."""

    @abstractmethod
    def sample_weights(self, cfg, targets: np.ndarray) -> np.ndarray | None:
        """Per-image sampling weights, or None for uniform sampling."""

    @abstractmethod
    def prior(self, labels: np.ndarray, n_heads: int) -> list[float]:
        """The training set's class prior (a bundle predicts it for an image it cannot decode)."""

    @abstractmethod
    def split(self, labels: np.ndarray, groups: np.ndarray | None, n_folds: int, seed: int) -> np.ndarray:
        """A fold id per image, stratified as this kind needs, groups kept in one fold."""

    def rule_splits(self, labels, seed: int):
        """The decision-rule check's inner folds: stratified by the label when there is one column with
        enough of each value, else plain k-fold."""
        from sklearn.model_selection import KFold, StratifiedKFold
        columns = np.asarray(labels).reshape(len(labels), -1)
        if columns.shape[1] == 1 and np.unique(columns, return_counts=True)[1].min() >= CHECK_SPLITS:
            return StratifiedKFold(CHECK_SPLITS, shuffle=True, random_state=seed).split(columns, columns[:, 0])
        return KFold(CHECK_SPLITS, shuffle=True, random_state=seed).split(columns)

    def bootstrap_wins(self, task, labels, chosen, neutral, seed: int, draws: int) -> float:
        """The share of bootstrap resamples of the images on which ``chosen`` decisions outscore ``neutral``."""
        rng = np.random.default_rng(seed)
        wins = 0
        for _ in range(draws):
            idx = rng.integers(0, len(labels), len(labels))
            wins += (self.scores(task, labels[idx], chosen[idx])["score"]
                     > self.scores(task, labels[idx], neutral[idx])["score"])
        return wins / draws

    baseline_name = "linear probe"             # what run_baseline trains, as the run's summary names it

    @abstractmethod
    def run_baseline(self, task, cfg, cache, hashes, labels, targets, masks, fold_ids, run_dir: Path, device) -> dict:
        """The cheap baseline on the run's folds (its score is reported beside the recipe's)."""

    @abstractmethod
    def probe_advice(self, task, cfg) -> str:
        """What to do when the baseline beat the trained recipe."""

    @abstractmethod
    def plot_oof(self, run_dir: Path, task, truth, probs, rule: dict, fold_ids, score: float) -> None:
        """The run folder's out-of-fold plots."""

    @abstractmethod
    def draw_gallery(self, run_dir: Path, task, truth, probs, fold_ids, rule: dict, images, norm) -> None:
        """The run folder's gallery of its worst out-of-fold images."""


class Kind(TaskFileKind, InferenceKind, TrainingKind):
    """A task kind: all three parts."""


def fold_ids(splits, n: int) -> np.ndarray:
    """A fold id per image from a scikit-learn splitter's (train, validation) index pairs: each image's fold
    is the one that validates it."""
    fold = np.full(n, -1)
    for k, (_, val) in enumerate(splits):
        fold[val] = k
    return fold


def check_halvings(img_size: int, network: str) -> None:
    """ValueError unless ``img_size`` survives the five halvings of ``network`` (a multiple of 32)."""
    if img_size % 32:
        raise ValueError(f"img_size={img_size}: {network} halves its input five times; use a multiple of 32 "
                         f"(say {max(32, round(img_size / 32) * 32)})")
