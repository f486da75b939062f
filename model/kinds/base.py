"""The interface every task kind implements, and what most kinds share.

A kind decides everything that differs between kinds of task; the rest of the code (task files, readers,
folds, the training engine, bundles, prediction, the ONNX path, scoring) calls these methods and never asks
which kind it holds. The groups of the interface:

* **task file**: ``heads_key`` (what a task file lists), ``read_heads``, ``heads_value``, ``metrics`` and
  ``default_metric``, ``output_values`` and ``default_output_file``;
* **network**: ``network_spec`` (architecture and outputs), ``output_block`` (what the network emits, in the
  manifest), ``probabilities``, ``deaugment`` (a TTA view back to the original geometry), ``crop_border``
  (the input preprocessing);
* **training**: ``truth`` (what a prediction is scored against), ``label_columns``, ``save_truth`` and
  ``load_truth`` (kept in the run folder), ``encode``, ``make_loss``, ``sample_weights``, ``prior``,
  ``split`` (fold stratification), ``prob_dtype`` (how OOF probabilities are stored), ``oof_columns``;
* **decision rule and metric**: ``neutral_rule``, ``rule_grid``, ``decide``, ``check_rule``,
  ``rule_splits``, ``bootstrap_wins``, ``scores``, ``details``;
* **outputs**: ``fill_failed`` (an image that could not be decoded), ``write_outputs``, ``score_outputs``;
* **report**: ``draw_report`` (plots of a run folder).

A new kind is a module with a ``Kind`` subclass and one line in ``model/kinds/__init__.py``.
"""
from __future__ import annotations

import numpy as np

CHECK_SPLITS = 5


class Kind:
    name = ""
    heads_key, min_heads = "classes", 1
    metrics: tuple[str, ...] = ()
    default_metric = ""
    output_values: tuple[str, ...] = ()
    config_keys: frozenset = frozenset()       # recipe keys that only this kind reads
    defaults: dict = {}                        # recipe defaults of this kind
    crop_border = True                         # inputs: crop the dark frame before resizing (model.images)
    label_layout = ""                          # how a reader finds labels: class (one column of class
                                               # values), columns (one 0/1/empty column per label) or mask
    binary_positive = False                    # whether a two-head task names a positive: class
    prob_dtype = np.float64                    # out-of-fold probabilities, as stored
    predict_dtype = np.float64                 # run.py's probabilities

    # --- task file -------------------------------------------------------------------------------------
    def read_heads(self, value, where: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
        """(head names, mask values) from the task file's ``heads_key`` value: a list of names here."""
        from ..task import TaskFileError
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
        return f"{name}_pre.csv"

    def output_is_folder(self, values: str) -> bool:
        return False

    # --- network -----------------------------------------------------------------------------------------
    def network_spec(self, cfg, n_heads: int) -> dict:
        """What rebuilds the network: ``architecture`` (model.network) and its number of ``outputs``."""
        return {"architecture": "classifier", "outputs": n_heads}

    def output_block(self, task, img_size: int) -> dict:
        """What the network emits, as the manifest states it (MONAI's network_data_format.outputs)."""
        return {"type": "probabilities", "channels": len(task.heads), "spatial_shape": [],
                "channel_names": list(task.heads)}

    def deaugment(self, transform, outputs):
        """A TTA view's outputs in the original image's frame: an image-level output does not move."""
        return transform.deaugment_label(outputs)

    def check_config(self, cfg) -> None:
        """Raise ValueError for a recipe this kind cannot train."""

    # --- decision rule ---------------------------------------------------------------------------------
    rule_grid: dict = {}                       # rule key -> the values the rule search tries

    def neutral_rule(self, n_heads: int) -> dict:
        raise NotImplementedError

    def check_rule(self, rule, n_heads: int) -> bool:
        """Whether a manifest's ``decision`` has this kind's keys, each with the right number of numbers."""
        neutral = self.neutral_rule(n_heads)
        return (isinstance(rule, dict) and set(rule) == set(neutral)
                and all(_numbers(rule[k], len(v)) for k, v in neutral.items()))

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

    def scores(self, task, labels, predicted, probs=None) -> dict:
        raise NotImplementedError

    # --- training data -----------------------------------------------------------------------------------
    def head_counts(self, labels: np.ndarray, n_heads: int) -> np.ndarray:
        """(heads,) how many training images show each head (label 1 of a 0/1 column)."""
        return (np.asarray(labels).reshape(len(labels), n_heads) == 1).sum(0)

    def truth(self, samples, cache):
        """What predictions are scored against: here the readers' labels, (N, label columns)."""
        return np.array([s.labels for s in samples])

    def save_truth(self, run_dir, truth) -> None:
        """Keep what samples.csv cannot hold in the run folder (nothing, for labels)."""

    def load_truth(self, run_dir, frame, task):
        """The truth of a run folder's images, in samples.csv's order."""
        return frame[self.label_columns(task.heads)].to_numpy()

    def label_columns(self, heads) -> list[str]:
        raise NotImplementedError

    def oof_columns(self, task, probs: np.ndarray) -> dict:
        """oof.csv's probability columns."""
        return {f"p_{head}": probs[:, j] for j, head in enumerate(task.heads)}

    failed_note = "predicted from the class prior"

    def truth_location(self, task) -> str:
        """Where model.score looks for the task's ground truth under GT_DIR (for messages)."""
        return task.gt_file

    def fill_failed(self, probs: np.ndarray, index: int, prior: np.ndarray) -> None:
        """The prediction of an image that could not be decoded: the class prior."""
        probs[index] = prior


def _numbers(values, n: int) -> bool:
    return (isinstance(values, list) and len(values) == n
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in values))
