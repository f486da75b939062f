"""Detection: boxes of object classes, from a torchvision detector (FCOS by default; RetinaNet and Faster
R-CNN as the recipe key ``architecture``) on a timm encoder with a feature pyramid (model.detector).

A task file lists the object classes (``classes: [RBC, WBC, Platelets]``); an image may hold none. The
network emits a list of boxes of any length per image, carried as a fixed-shape array through every layer
(model.detector's contract: (MAX_DETECTIONS, 6) rows of x1, y1, x2, y2 relative to the image, score, class,
empty rows scored 0), so the fold ensemble, TTA, the OOF store, the bundle and run.py hold it as they hold
any kind's output. What differs is said here: TTA views are un-flipped as keypoints (ttach), and the folds
and views are fused by Weighted Boxes Fusion (model.boxes.fuse) instead of averaged.

The truth of a set of images is a padded array too, (N, M, 5) rows of class (-1: padding) and x1, y1, x2, y2
relative, which the loader moves with the image (albumentations' bbox support) as the training targets.
Scores are pycocotools' (model.box_metric): mAP@0.5:0.95 by default, mAP@0.5, or the mean per-image F1 at
the rule's thresholds. The decision rule is a score threshold per class: for F1 it is tuned out of fold
behind the same check as every kind's rule; for mAP it stays at the network's floor, because mAP ranks every
box by its score and a threshold can only cut recall from the end of the curve (the outputs then hold every
box the network kept, as a COCO-scored competition wants).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..boxes import detections, in_pixels, pad, true_boxes
from ..registry import register
from .base import Kind, check_halvings
from .classification import multilabel_fold_ids

FUSION, FUSION_IOU = "wbf", 0.55     # how folds and TTA views are merged (model.boxes.fuse)
SCORE_FLOOR = 0.05                  # the detectors' own lowest kept score (model.detector)
TRUE_COLUMNS = 5                    # class, x1, y1, x2, y2


@register
class Detection(Kind):
    name = "detection"
    heads_key, min_heads = "classes", 1
    metrics = ("map", "map50", "f1")
    default_metric = "map"
    output_values = ("boxes", "prediction-string", "coco", "summary")
    recipe_keys = frozenset({"architecture"})
    defaults = {"architecture": "fcos", "img_size": 512, "lr": 1e-3, "epochs": 20, "label_smoothing": 0.0,
                "cutmix_p": 0.0, "batch_size": 8}
    crop_border = False        # boxes must map back onto the original pixels
    label_layout = "boxes"
    box_targets = True
    prob_dtype = np.float32
    predict_dtype = np.float32
    rule_grid = {"threshold": np.round(np.arange(0.1, 0.8001, 0.05), 2)}
    failed_note = "predicted with no boxes"
    baseline_name = "frozen-encoder detector"

    # --- task file -------------------------------------------------------------------------------------
    def output_columns(self, heads, values: str) -> list[str]:
        from ..outputs.boxes import default_columns
        return default_columns(values, heads)

    def default_output_file(self, name: str, values: str) -> str:
        return f"{name}_pre.json" if values == "coco" else super().default_output_file(name, values)

    def output_suffix(self, values: str) -> str:
        return ".json" if values == "coco" else super().output_suffix(values)

    # --- network -----------------------------------------------------------------------------------------
    def network_spec(self, cfg, n_heads: int) -> dict:
        return {"architecture": cfg.architecture, "outputs": n_heads}

    def check_config(self, cfg) -> None:
        from ..detector import DETECTORS
        if cfg.architecture not in DETECTORS:
            raise ValueError(f"architecture={cfg.architecture}: a detection task trains one of {', '.join(DETECTORS)}")
        check_halvings(cfg.img_size, "a detector's pyramid")
        if cfg.augment == "device":
            raise ValueError("augment=device: boxes move with their images on the CPU (albumentations); use cpu or auto")
        if cfg.cutmix_p > 0:
            raise ValueError("cutmix_p: CutMix mixes image labels; a detection task's boxes do not mix, set it to 0")

    def output_block(self, task, img_size: int) -> dict:
        from ..detector import MAX_DETECTIONS
        return {"type": "boxes", "channels": MAX_DETECTIONS, "spatial_shape": [6],
                "row": ["x1", "y1", "x2", "y2", "score", "class"], "coordinates": "relative to the image (0..1)",
                "empty_row": "score 0, class -1", "class_names": list(task.heads)}

    def probabilities(self, outputs):
        return outputs             # model.detector.Detector scores its boxes itself

    def training_outputs(self, net, images, targets):
        return net(images, targets)     # the detector computes its own loss from the targets

    def deaugment(self, transform, outputs):
        """A TTA view's boxes in the original frame: each box's two corners un-flipped as keypoints."""
        import torch
        corners = transform.deaugment_keypoints(outputs[..., :4].reshape(*outputs.shape[:-1], 2, 2))
        lo, hi = corners.min(dim=-2).values, corners.max(dim=-2).values
        return torch.cat([lo, hi, outputs[..., 4:]], dim=-1)

    def combine(self, stacked):
        """Folds (or TTA views) fused per image by Weighted Boxes Fusion, in relative coordinates."""
        import torch
        from ..boxes import fuse
        fused = [pad(fuse([detections(view[i]) for view in stacked.cpu().numpy()], 1, 1, FUSION, FUSION_IOU),
                     stacked.shape[2]) for i in range(stacked.shape[1])]
        return torch.from_numpy(np.stack(fused)).to(stacked.device) if fused else stacked[0]

    def onnx_blocker(self, task) -> str | None:
        return ("its folds' and views' boxes are fused by Weighted Boxes Fusion (ensemble-boxes, in numpy), which "
                "an ONNX graph cannot hold")

    def fill_failed(self, probs: np.ndarray, index: int, prior) -> None:
        probs[index] = 0.0
        probs[index, :, 5] = -1

    # --- decision rule and metric ----------------------------------------------------------------------------
    def neutral_rule(self, n_heads: int) -> dict:
        return {"threshold": [SCORE_FLOOR] * n_heads}

    def rule_free(self, task) -> str | None:
        if task.metric in ("map", "map50"):
            return ("mAP ranks every box by its score, so a threshold can only lower it: every box the network "
                    f"keeps (score {SCORE_FLOOR} and up) is written")
        return None

    def decide(self, probs: np.ndarray, rule: dict | None = None) -> np.ndarray:
        """The boxes kept: those scored at or above their class's threshold (the others emptied)."""
        thresholds = np.asarray(rule["threshold"] if rule else [SCORE_FLOOR], np.float32)
        probs = np.array(probs, np.float32, copy=True)
        classes = probs[..., 5].astype(np.int64)
        known = classes >= 0
        keep = known & (probs[..., 4] >= thresholds[np.clip(classes, 0, len(thresholds) - 1)])
        probs[~keep] = 0.0
        probs[..., 5][~keep] = -1
        return probs

    def scores(self, task, labels, predicted, probs=None) -> dict:
        truth, preds = true_boxes(labels), [detections(p) for p in predicted]
        if task.metric == "f1":
            from ..box_metric import image_f1
            thresholds = np.zeros(len(task.heads))
            return {"score": float(np.mean([image_f1(t, p, thresholds) for t, p in zip(truth, preds)]))}
        from ..box_metric import detection_scores
        found = detection_scores(truth, preds, task.heads, 0.0)
        found.pop("pr_curves")
        return {"score": found[task.metric], **found}

    def details(self, task, labels, predicted, probs) -> dict:
        from ..box_metric import detection_scores
        found = detection_scores(true_boxes(labels), [detections(p) for p in predicted], task.heads, 0.0)
        return {"per_class": {"ap": found["ap"], "ap50": found["ap50"]},
                "detection": {k: found[k] for k in ("sensitivity", "specificity", "auc")},
                "pr_curves": found["pr_curves"]}

    # --- training data -----------------------------------------------------------------------------------
    def truth(self, samples, cache) -> np.ndarray:
        """(N, M, 5): each image's boxes (class, x1, y1, x2, y2 relative), padded with class -1."""
        most = max([len(s.objects) for s in samples] + [1])
        out = np.zeros((len(samples), most, TRUE_COLUMNS), np.float32)
        out[..., 0] = -1
        for i, sample in enumerate(samples):
            for j, ((label, *_), (xc, yc, w, h)) in enumerate(zip(sample.objects, sample.boxes)):
                out[i, j] = (label, xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2)
        return out

    def label_columns(self, heads) -> list[str]:
        return [f"has_{h}" for h in heads]

    def save_truth(self, run_dir, truth: np.ndarray) -> None:
        from ..atomic import atomic_path
        with atomic_path(Path(run_dir) / "boxes.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, truth)

    def load_truth(self, run_dir, frame, task) -> np.ndarray:
        path = Path(run_dir) / "boxes.npy"
        try:
            truth = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: the run's true boxes cannot be read ({e}); rerun training to rewrite it") from e
        if truth.ndim != 3 or truth.shape[2] != TRUE_COLUMNS or len(truth) != len(frame):
            raise ValueError(f"{path}: {truth.shape} does not hold the boxes of {len(frame)} images in samples.csv; "
                             "rerun training")
        return truth

    def encode(self, labels: np.ndarray, n_heads: int) -> tuple[np.ndarray, np.ndarray]:
        """The padded true boxes are the loader's targets (moved with the image); no per-target mask."""
        return np.asarray(labels, np.float32), np.ones((len(labels), 1), np.float32)

    def prior(self, labels: np.ndarray, n_heads: int) -> list[float]:
        """The share of images holding each class."""
        classes = np.asarray(labels)[..., 0]
        return [float((classes == c).any(1).mean()) for c in range(n_heads)]

    def split(self, labels: np.ndarray, groups, n_folds: int, seed: int) -> np.ndarray:
        """Fold id per image, stratified by which classes it holds (iterstrat), whole groups per fold."""
        return multilabel_fold_ids(np.asarray(labels), groups, n_folds, seed)

    def make_loss(self, cfg, targets, masks):
        from ..training.losses import DetectorLoss
        return DetectorLoss()

    def sample_weights(self, cfg, targets):
        return None

    def oof_columns(self, task, probs: np.ndarray) -> dict:
        """Per class, the highest score of a box of that class in the image."""
        probs = np.asarray(probs)
        return {f"p_{head}": np.where(probs[..., 5] == c, probs[..., 4], 0.0).max(1) for c, head in enumerate(task.heads)}

    # --- outputs ---------------------------------------------------------------------------------------------
    def write_outputs(self, task, out_dir: Path, images, prediction, rule: dict, id_mode: str | None = None) -> Path:
        """The kept boxes in each image's own pixels, in the task's output format (model.outputs.boxes)."""
        from ..outputs.boxes import write_detections
        out, id_mode = task.output, id_mode or task.output.id
        kept = self.decide(prediction.probs, rule)
        found = [in_pixels(detections(rows), shape) for rows, shape in zip(kept, prediction.shapes)]
        path = Path(out_dir) / out.file
        write_detections(path, out.values, [image.written_id(id_mode) for image in images], out.header_for(id_mode),
                         task.heads, found, rule["threshold"], out.columns)
        return path

    def validate_output(self, path: Path, task, images) -> list[str]:
        """What run.py --check finds wrong with a written output: it reads back, with every image there
        (a COCO file lists only images with boxes)."""
        from ..outputs.boxes import read_detections
        try:
            found = read_detections(path, task.output.values, task.output.id_header, task.heads, task.output.columns)
        except ValueError as e:
            return [str(e)]
        if task.output.values == "coco":
            return []
        ids = [image.written_id(task.output.id) for image in images]
        return [f"{path}: no row for {i}" for i in ids if i not in found]

    def truth_location(self, task) -> str:
        return f"{task.test_folder}/ (true boxes, read by the task's {task.data.get('reader')} reader)"

    def score_outputs(self, task, pred_dir: Path, gt_dir: Path):
        from ..outputs.boxes import score_box_task
        return score_box_task(task, pred_dir, gt_dir)

    def plot_oof(self, run_dir: Path, task, truth, probs, rule: dict, fold_ids, score: float) -> None:
        """pr.png: each class's precision-recall curve at IoU 0.5, out of fold."""
        from ..training.det_report import plot_pr_curves
        plot_pr_curves(Path(run_dir) / "pr.png", task, self.details(task, truth, self.decide(probs, rule), probs))

    def draw_gallery(self, run_dir: Path, task, truth, probs, fold_ids, rule: dict, images, norm) -> None:
        """errors.png: the worst and the median OOF images, true boxes green, predicted red."""
        from ..training.det_report import write_box_gallery
        write_box_gallery(Path(run_dir) / "errors.png", task, truth, self.decide(probs, rule), images)

    def probe_advice(self, task, cfg) -> str:
        return ("the detector has not learnt past its frozen encoder: train more epochs, at a larger img_size, or "
                "tune lr (python train.py tune)")

    def run_baseline(self, task, cfg, cache, hashes, labels, targets, masks, fold_ids, run_dir: Path, device) -> dict:
        """The detector with its encoder frozen, trained briefly on the same folds (model.training.det_probe)."""
        from ..training.det_probe import run_frozen_baseline
        run_frozen_baseline(task, cfg, cache, labels, targets, masks, fold_ids, run_dir)
        return {}

