"""Segmentation: a class per pixel, from a U-Net (or any segmentation-models-pytorch architecture) on a
timm encoder.

A task file lists its foreground classes with their values in the mask images (``classes: {tumour: 255}``).
The network emits one channel for one class (sigmoid) or a background channel plus one per class
(softmax); ``probabilities`` are always the foreground classes' (N, C, H, W) maps. The decision rule is a
probability threshold and a minimum lesion area (connected components smaller than that fraction of the
image are removed), tuned out of fold behind the same check as the classification rules. Scores are
model.masks': Dice per volume (patient) by default, Dice and IoU per image, pixel sensitivity and
specificity. A per-image "has a lesion" probability (the highest pixel probability) comes with every
prediction, so a segmentation bundle also answers the binary question.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np

from .. import masks as M
from ..registry import register
from .base import CHECK_SPLITS, Kind, check_halvings, fold_ids


class MaskSet:
    """The true masks of a set of images (N, H, W class ids at the network's size) and each image's
    group (its patient, or its own key). Indexes like an array, so the generic code slices it as it
    slices class labels."""

    def __init__(self, masks: np.ndarray, groups: np.ndarray):
        self.masks, self.groups = masks, np.asarray(groups).astype(str)

    def __len__(self) -> int:
        return len(self.masks)

    def __getitem__(self, index) -> "MaskSet":
        return MaskSet(self.masks[index], self.groups[index])


@register
class Segmentation(Kind):
    name = "segmentation"
    heads_key, min_heads = "classes", 1
    metrics = ("dice", "dice_per_image", "iou")
    default_metric = "dice"
    output_values = ("masks", "rle", "summary")
    recipe_keys = frozenset({"architecture", "dice_weight"})
    defaults = {"label_smoothing": 0.0, "img_size": 256, "lr": 1e-3, "epochs": 20}
    crop_border = False        # the mask must map back onto the original pixels
    baseline_name = "pixel linear probe"
    label_layout = "mask"
    prob_dtype = np.float16    # OOF maps: 781 LGG slices at 256 px are 100 MB in float16
    predict_dtype = np.float32
    rule_grid = {"threshold": np.round(np.arange(0.1, 0.9001, 0.05), 2),
                 "min_area": np.array([0.0, 0.0005, 0.001, 0.002, 0.005, 0.01])}

    # --- task file -------------------------------------------------------------------------------------
    def read_heads(self, value, where: str):
        from ..errors import TaskFileError
        example = "like classes: {lesion: 255} (each foreground class and its value in the mask images)"
        if not isinstance(value, dict) or not value:
            raise TaskFileError(f"{where}: classes: a segmentation task maps each class to its mask value, {example}")
        names, values = [], []
        for name, mask_value in value.items():
            if not isinstance(name, str) or not name.strip():
                raise TaskFileError(f"{where}: classes: {name!r} is not a class name, {example}")
            if not isinstance(mask_value, int) or isinstance(mask_value, bool) or not 1 <= mask_value <= 65535:
                raise TaskFileError(f"{where}: classes: {name}: {mask_value!r} is not a mask value from 1 to 65535 "
                                    "(0 is the background)")
            names.append(name.strip())
            values.append(mask_value)
        if len(set(values)) != len(values):
            raise TaskFileError(f"{where}: classes: two classes share one mask value ({value})")
        return tuple(names), tuple(values)

    def heads_value(self, task):
        return dict(zip(task.heads, task.mask_values))

    def default_output_file(self, name: str, values: str) -> str:
        return f"{name}_masks" if values == "masks" else super().default_output_file(name, values)

    def output_suffix(self, values: str) -> str:
        return "" if values == "masks" else super().output_suffix(values)

    def output_columns(self, heads, values: str) -> list[str]:
        if values == "summary":
            return [f"p_{h}" for h in heads] + [f"area_{h}" for h in heads]
        return ["class", "rle"] if values == "rle" else []

    # --- network -----------------------------------------------------------------------------------------
    def network_spec(self, cfg, n_heads: int) -> dict:
        return {"architecture": cfg.architecture, "outputs": 1 if n_heads == 1 else n_heads + 1}

    def output_block(self, task, img_size: int) -> dict:
        n = len(task.heads)
        return {"type": "segmentation", "channels": n, "spatial_shape": [img_size, img_size],
                "channel_names": list(task.heads), "activation": "sigmoid" if n == 1 else "softmax, background dropped",
                "value_range": [0, 1]}

    def check_config(self, cfg) -> None:
        check_halvings(cfg.img_size, "a segmentation network")

    def probabilities(self, logits):
        if logits.shape[1] == 1:
            return logits.sigmoid()
        return logits.softmax(dim=1)[:, 1:]

    def deaugment(self, transform, outputs):
        return transform.deaugment_mask(outputs)

    # --- training data -----------------------------------------------------------------------------------
    def truth(self, samples, cache) -> MaskSet:
        return MaskSet(cache.masks_eval, [s.group if s.group is not None else s.key for s in samples])

    def label_columns(self, heads) -> list[str]:
        return [f"has_{h}" for h in heads]

    def save_truth(self, run_dir, truth: MaskSet) -> None:
        from ..atomic import atomic_path
        with atomic_path(Path(run_dir) / "masks.npz") as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, masks=truth.masks, groups=truth.groups)

    def load_truth(self, run_dir, frame, task) -> MaskSet:
        path = Path(run_dir) / "masks.npz"
        try:
            with np.load(path) as saved:
                truth = MaskSet(saved["masks"], saved["groups"])
        except (OSError, KeyError, ValueError) as e:
            raise ValueError(f"{path}: the run's true masks cannot be read ({e}); rerun training to rewrite it") from e
        if len(truth) != len(frame):
            raise ValueError(f"{path}: {len(truth)} masks for {len(frame)} images in samples.csv; rerun training")
        return truth

    def encode(self, labels: MaskSet, n_heads: int):
        """Per image: which classes it shows (the loader's targets are the augmented masks themselves)."""
        present = np.stack([(labels.masks == c).any((1, 2)) for c in range(1, n_heads + 1)], 1).astype(np.float32)
        return present, np.ones_like(present)

    def prior(self, labels: MaskSet, n_heads: int) -> list[float]:
        present, _ = self.encode(labels, n_heads)
        return present.mean(0).tolist()

    def split(self, labels: np.ndarray, groups, n_folds: int, seed: int) -> np.ndarray:
        """Fold id per image, stratified by "has a lesion", whole groups (patients) per fold."""
        from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold
        has = np.asarray(labels).reshape(len(labels), -1).any(1).astype(int)
        if len(has) < n_folds or groups is not None and len(np.unique(groups)) < n_folds:
            raise ValueError(f"{len(has) if groups is None else len(np.unique(groups))} "
                             f"{'images' if groups is None else 'groups'} cannot make {n_folds} folds; lower n_folds")
        stratify = np.bincount(has, minlength=2).min() >= n_folds
        if groups is None:
            splitter = (StratifiedKFold if stratify else KFold)(n_folds, shuffle=True, random_state=seed).split(has, has)
        elif stratify:
            splitter = StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed).split(has, has, groups)
        else:
            splitter = GroupKFold(n_folds).split(has, has, groups)
        return fold_ids(splitter, len(has))

    def make_loss(self, cfg, targets, masks):
        from ..training.losses import SegmentationLoss
        return SegmentationLoss(targets.shape[1], cfg.dice_weight, cfg.label_smoothing)

    def sample_weights(self, cfg, targets):
        return None

    def oof_columns(self, task, probs: np.ndarray) -> dict:
        peak = lesion_probability(probs)
        return {f"p_{head}": peak[:, j] for j, head in enumerate(task.heads)}

    failed_note = "predicted as an empty mask"

    def fill_failed(self, probs: np.ndarray, index: int, prior) -> None:
        probs[index] = 0.0     # an image that could not be read gets an empty mask

    # --- decision rule and metric ----------------------------------------------------------------------------
    def neutral_rule(self, n_heads: int) -> dict:
        return {"threshold": [0.5], "min_area": [0.0]}

    def decide(self, probs: np.ndarray, rule: dict | None = None) -> np.ndarray:
        """(N, H, W) class ids from (N, C, H, W) probabilities."""
        rule = rule or self.neutral_rule(0)
        threshold, min_area = float(rule["threshold"][0]), float(rule["min_area"][0])
        return np.stack([M.decide_mask(np.asarray(p, np.float32), threshold, min_area) for p in probs]) \
            if len(probs) else np.zeros((0, *np.shape(probs)[2:]), np.uint8)

    def rule_splits(self, labels: MaskSet, seed: int):
        """Whole groups (patients) per inner fold: slices of one patient would leak into each other."""
        from sklearn.model_selection import GroupKFold, KFold
        n_groups = len(np.unique(labels.groups))
        if n_groups >= 2:
            return GroupKFold(min(CHECK_SPLITS, n_groups)).split(labels.masks, groups=labels.groups)
        return KFold(CHECK_SPLITS, shuffle=True, random_state=seed).split(labels.masks)

    def bootstrap_wins(self, task, labels: MaskSet, chosen, neutral, seed: int, draws: int) -> float:
        """Resamples of the volumes (or images, for a per-image metric), from counts taken once."""
        n = len(task.heads)
        a, b = M.pixel_counts(chosen, labels.masks, n), M.pixel_counts(neutral, labels.masks, n)
        if task.metric == "dice":
            (_, a), (_, b) = M.volume_counts(a, labels.groups), M.volume_counts(b, labels.groups)
        unit = M.iou_of if task.metric == "iou" else M.dice_of
        a, b = unit(a).mean(1), unit(b).mean(1)
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, len(a), (draws, len(a)))
        return float(np.mean(a[idx].mean(1) > b[idx].mean(1)))

    def scores(self, task, labels: MaskSet, predicted, probs=None) -> dict:
        counts = M.pixel_counts(predicted, labels.masks, len(task.heads))
        return M.segmentation_scores(counts, labels.groups, task.metric)

    def details(self, task, labels: MaskSet, predicted, probs) -> dict:
        """Per class scores, each image's and each volume's Dice, and the image-level answer "has a lesion":
        sensitivity, specificity, AUC."""
        from ..metric import binary_auc, binary_rates
        counts = M.pixel_counts(predicted, labels.masks, len(task.heads))
        has_true = (labels.masks > 0).reshape(len(labels), -1).any(1)
        has_predicted = (np.asarray(predicted) > 0).reshape(len(labels), -1).any(1)
        detection = {**binary_rates(has_true, has_predicted), "images_with_lesion": int(has_true.sum()),
                     "auc": binary_auc(has_true, lesion_probability(probs).max(1))}
        names, volumes = M.volume_counts(counts, labels.groups)
        return {"per_class": M.per_class_scores(counts, labels.groups, task.heads), "detection": detection,
                "per_image_dice": M.image_dice(counts).tolist(),
                "per_volume_dice": dict(zip(names.tolist(), M.dice_of(volumes).mean(1).tolist()))}

    # --- outputs ---------------------------------------------------------------------------------------------
    def write_outputs(self, task, out_dir: Path, images, prediction, rule: dict, id_mode: str | None = None) -> Path:
        """Masks at each image's original size, in the task's output format."""
        from ..outputs import masks as O
        from ..atomic import write_text
        masks, peaks = [], []
        for probs, shape in zip(prediction.probs, prediction.shapes):
            full = resize_probs(np.asarray(probs, np.float32), shape)
            masks.append(self.decide(full[None], rule)[0])
            peaks.append(lesion_probability(full[None])[0])
        out, id_mode = task.output, id_mode or task.output.id
        id_header = out.header_for(id_mode)
        path = Path(out_dir) / out.file
        if out.values == "masks":
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{out.file}.", dir=out_dir))
            try:
                O.write_mask_folder(staging, images, masks, task.mask_values)
                os.chmod(staging, 0o755)
                if path.exists():
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
                os.replace(staging, path)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        elif out.values == "rle":
            write_text(path, O.rle_csv(images, masks, task.heads, out.rle_order, id_header, id_mode, out.columns))
        else:
            write_text(path, O.summary_csv(images, masks, np.array(peaks).reshape(len(masks), -1), task.heads,
                                           id_header, id_mode, out.columns))
        return path

    def validate_output(self, path: Path, task, images) -> list[str]:
        """What run.py --check finds wrong with written masks: each image's mask there, readable, at the
        image's size (an RLE CSV decodes to that size); a summary CSV has one row per image."""
        from PIL import Image

        from ..outputs import masks as O
        from ..outputs.tables import read_output_csv
        from ..images import upright_size
        if task.output.values == "summary":
            rows, problems = read_output_csv(path, task)
            return problems or ([] if len(rows) == len(images) + 1 else [f"{path}: {len(rows) - 1} rows for {len(images)} images"])
        shapes = {}
        for image, name in zip(images, O.mask_file_names(images)):
            with Image.open(image.path) as im:
                key = Path(name).stem if task.output.values == "masks" else image.written_id(task.output.id)
                width, height = upright_size(im)      # as run.py decoded it (EXIF orientation applied)
                shapes[key] = (height, width)
        try:
            if task.output.values == "masks":
                found, problems = O.read_mask_folder(path, list(shapes), task.mask_values)
            else:
                found, problems = O.read_rle_csv(path, shapes, task.heads, task.output.rle_order, task.output.columns)
        except ValueError as e:
            return [str(e)]
        problems += [f"{path}: no mask for {key}" for key in shapes if key not in found]
        problems += [f"{path}: the mask of {key} is {found[key].shape}, not the image's {shape}"
                     for key, shape in shapes.items() if key in found and found[key].shape != shape]
        return problems

    def truth_location(self, task) -> str:
        return f"{task.test_folder}/ (true masks)"

    def score_outputs(self, task, pred_dir: Path, gt_dir: Path):
        from ..outputs.masks import score_mask_task
        return score_mask_task(task, pred_dir, gt_dir)

    def plot_oof(self, run_dir: Path, task, truth: MaskSet, probs, rule: dict, fold_ids, score: float) -> None:
        """dice.png: the histogram of per-image Dice in each fold."""
        from ..training.seg_report import plot_dice_histograms
        counts = M.pixel_counts(self.decide(probs, rule), truth.masks, len(task.heads))
        plot_dice_histograms(run_dir / "dice.png", task, M.image_dice(counts), fold_ids, score)

    def draw_gallery(self, run_dir: Path, task, truth: MaskSet, probs, fold_ids, rule: dict, images, norm) -> None:
        """errors.png: the worst and the median OOF images, true and predicted contours."""
        from ..training.seg_report import write_seg_gallery
        write_seg_gallery(run_dir / "errors.png", task, truth, self.decide(probs, rule), images)

    def probe_advice(self, task, cfg) -> str:
        return ("the network has not learnt past a linear read-out of its frozen encoder: train more epochs, at a "
                "larger img_size, or tune lr (python train.py tune)")

    def run_baseline(self, task, cfg, cache, hashes, labels, targets, masks, fold_ids, run_dir: Path, device) -> dict:
        """The pixel linear probe on frozen encoder features (model.training.seg_probe), on the run's folds."""
        from ..training.seg_probe import run_pixel_probe
        run_pixel_probe(task, cfg, cache, labels, fold_ids, run_dir, device)
        return {}


def lesion_probability(probs: np.ndarray) -> np.ndarray:
    """(N, C) the highest pixel probability of each class per image: how sure the network is that the
    image shows that class at all."""
    probs = np.asarray(probs)
    return probs.reshape(*probs.shape[:2], -1).max(2).astype(np.float64)


def resize_probs(probs: np.ndarray, shape) -> np.ndarray:
    """(C, H, W) probability maps at the image's original (height, width), bilinear."""
    height, width = int(shape[0]), int(shape[1])
    if probs.shape[1:] == (height, width):
        return probs
    return np.stack([cv2.resize(p, (width, height), interpolation=cv2.INTER_LINEAR) for p in probs])
