"""The detection metric against a case worked by hand, and its edges."""
import numpy as np
import pytest

from model.box_metric import box_iou, detection_scores
from model.errors import ScoreError

E = np.zeros((0, 4))
CLASSES = ["a", "b"]
# Image 1: a perfect box of each class.
# Image 2: one true box of a; a box of a at IoU 0.62 (10x6.2 inside 10x10), scored 0.8, and a false a at 0.85.
# Image 3: nothing true, nothing predicted.
# Image 4: nothing true; a false b scored 0.88.
TRUTH = [([[0, 0, 10, 10], [20, 20, 40, 40]], [0, 1]), ([[0, 0, 10, 10]], [0]), (E, []), (E, [])]
PREDS = [([[0, 0, 10, 10], [20, 20, 40, 40]], [0.9, 0.7], [0, 1]),
         ([[0, 0, 10, 6.2], [50, 50, 60, 60]], [0.8, 0.85], [0, 0]),
         (E, [], []),
         ([[30, 30, 50, 50]], [0.88], [1])]


def test_the_hand_checked_case():
    s = detection_scores(TRUTH, PREDS, CLASSES)
    # Class a, 2 true boxes, its boxes by score: 0.9 hit, 0.85 miss, 0.8 hit only at IoU thresholds <= 0.62.
    # At IoU 0.50, 0.55, 0.60: recall .5 .5 1, precision 1 .5 .667, made monotone 1 .667 .667; COCO reads it at
    # 101 recall points: 51 points (0 .. 0.50) at 1, 50 points at 2/3, AP = (51 + 50 * 2/3) / 101 = 253/303.
    # At 0.65 .. 0.95 (7 thresholds): recall never passes .5, AP = 51/101.
    ap_a50 = 253 / 303
    ap_a = (3 * ap_a50 + 7 * 51 / 101) / 10                            # = 1830/3030
    # Class b, 1 true box: 0.88 miss, then 0.7 hit at every IoU: precision 0 then .5, made monotone .5 .5: AP .5.
    assert s["ap50"] == pytest.approx({"a": ap_a50, "b": 0.5}, abs=1e-9)
    assert s["ap"] == pytest.approx({"a": ap_a, "b": 0.5}, abs=1e-9)
    assert s["map50"] == pytest.approx((ap_a50 + 0.5) / 2, abs=1e-9)
    assert s["map"] == pytest.approx((1830 / 3030 + 0.5) / 2, abs=1e-9)
    # AR@100: class a finds both boxes at 3 of 10 IoU thresholds and one at the other 7; class b always.
    assert s["recall"] == pytest.approx(((3 * 1 + 7 * 0.5) / 10 + 1) / 2)
    # F1 at 0.5: image 1: 1; image 2: 1 hit of 2 boxes for 1 true box, 2/3; image 3: 1 (nothing either way);
    # image 4: one false box, 0.
    assert s["f1"] == pytest.approx((1 + 2 / 3 + 1 + 0) / 4)
    # Has any object: images 1, 2 do; 1, 2, 4 have a box at >= 0.5. Highest scores .9 .85 | 0 (no box) .88:
    # of the 4 (positive, negative) pairs only (.85, .88) is misordered.
    assert (s["sensitivity"], s["specificity"], s["auc"]) == (1.0, 0.5, 0.75)


def test_a_threshold_per_class():
    s = detection_scores(TRUTH, PREDS, CLASSES, threshold=[0.5, 0.9])
    # b needs 0.9 now: image 1 misses its b (F1 2/3), image 4 says nothing (F1 1, a true negative).
    assert s["f1"] == pytest.approx((2 / 3 + 2 / 3 + 1 + 1) / 4)
    assert (s["sensitivity"], s["specificity"]) == (1.0, 1.0)
    assert s["map"] == pytest.approx(detection_scores(TRUTH, PREDS, CLASSES)["map"])   # AP has no threshold


def test_precision_recall_curves_at_iou_half():
    curves = detection_scores(TRUTH, PREDS, CLASSES)["pr_curves"]
    assert list(curves) == CLASSES
    a = curves["a"]
    assert len(a["recall"]) == len(a["precision"]) == 101 and a["recall"][0] == 0 and a["recall"][-1] == 1
    assert a["precision"] == pytest.approx([1.0] * 51 + [2 / 3] * 50)   # see the hand-checked case


def test_perfect_predictions_score_one():
    truth = [([[5, 5, 25, 45], [30, 0, 60, 20]], [0, 1]), (E, []), ([[1, 1, 4, 4]], [1])]
    preds = [(boxes, np.linspace(0.9, 0.8, len(labels)), labels) for boxes, labels in truth]
    s = detection_scores(truth, preds, CLASSES)
    for key in ("map", "map50", "recall", "f1", "sensitivity", "specificity", "auc"):
        assert s[key] == pytest.approx(1.0), key
    assert s["ap"] == s["ap50"] == {"a": pytest.approx(1.0), "b": pytest.approx(1.0)}


def test_no_predictions_at_all_score_zero():
    s = detection_scores(TRUTH, [(E, [], [])] * 4, CLASSES)
    assert (s["map"], s["map50"], s["recall"]) == (0.0, 0.0, 0.0)
    assert s["ap"] == s["ap50"] == {"a": 0.0, "b": 0.0}
    # Images 3 and 4 (nothing true, nothing said) are right; images 1 and 2 are missed.
    assert (s["f1"], s["sensitivity"], s["specificity"], s["auc"]) == (0.5, 0.0, 1.0, 0.5)


def test_auc_is_none_when_every_image_holds_an_object():
    truth = [([[0, 0, 5, 5]], [0]), ([[1, 1, 6, 6]], [1])]
    preds = [([[0, 0, 5, 5]], [0.9], [0]), (E, [], [])]
    s = detection_scores(truth, preds, CLASSES)
    assert s["auc"] is None and np.isnan(s["specificity"]) and s["sensitivity"] == 0.5


def test_a_class_without_a_true_box_cannot_be_scored():
    truth = [([[0, 0, 5, 5]], [0]), (E, [])]
    preds = [([[0, 0, 5, 5]], [0.9], [0]), ([[0, 0, 5, 5]], [0.9], [1])]
    with pytest.raises(ScoreError, match=r"^no true box of class 'b' in the 2 image\(s\) scored, so its AP"):
        detection_scores(truth, preds, CLASSES)
    with pytest.raises(ScoreError, match="class 'a', 'b'"):
        detection_scores([(E, [])], [(E, [], [])], CLASSES)


def test_max_dets_limits_the_boxes_per_image_that_count():
    # 30 cells in one image, each found: all count under the default 100, only the best 10 under 10.
    cells = np.array([[i * 20, 0, i * 20 + 10, 10] for i in range(30)], float)
    truth, preds = [(cells, np.zeros(30, int))], [(cells, np.linspace(0.99, 0.5, 30), np.zeros(30, int))]
    assert detection_scores(truth, preds, ["cell"])["map"] == pytest.approx(1.0)
    assert detection_scores(truth, preds, ["cell"], max_dets=10)["recall"] == pytest.approx(10 / 30)


def test_mismatched_inputs_are_our_errors():
    with pytest.raises(ValueError, match="1 images of truth, 2 of predictions"):
        detection_scores(TRUTH[:1], PREDS[:2], CLASSES)
    with pytest.raises(ValueError, match="predicted labels should be class indices 0..1"):
        detection_scores(TRUTH[:1], [([[0, 0, 1, 1]], [0.5], [2])], CLASSES)


def test_box_iou():
    iou = box_iou([[0, 0, 10, 10], [0, 0, 0, 0]], [[0, 0, 10, 6.2], [20, 20, 30, 30]])
    np.testing.assert_allclose(iou, [[0.62, 0], [0, 0]])
    assert box_iou(E, [[0, 0, 1, 1]]).shape == (0, 1)


def test_agrees_with_pycocotools_own_pipeline():
    """The official way (COCO.loadRes and COCOeval.summarize) gives the same mAP, mAP@0.5 and AR@100."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(0)
    truth, preds = [], []
    for _ in range(6):
        xy = rng.uniform(0, 80, (5, 2))
        boxes = np.hstack([xy, xy + rng.uniform(5, 20, (5, 2))])
        labels = rng.integers(0, 2, 5)
        truth.append((boxes, labels))
        noisy = np.vstack([boxes + rng.normal(0, 2, boxes.shape), [[50, 50, 60, 60]]])
        preds.append((noisy, rng.uniform(0.1, 1, 6), np.r_[labels, 1]))
    ours = detection_scores(truth, preds, CLASSES)
    gt = {"images": [{"id": i} for i in range(1, 7)], "categories": [{"id": 1}, {"id": 2}], "annotations": []}
    results = []
    for i, ((boxes, labels), (pboxes, scores, plabels)) in enumerate(zip(truth, preds), 1):
        for (x1, y1, x2, y2), label in zip(boxes, labels):
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i, "category_id": int(label) + 1,
                                      "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                      "iscrowd": 0})
        results += [{"image_id": i, "category_id": int(label) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                     "score": float(score)} for (x1, y1, x2, y2), score, label in zip(pboxes, scores, plabels)]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        evaluation = COCOeval(coco, coco.loadRes(results), iouType="bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    assert 0 < ours["map"] < ours["map50"] < 1
    assert (ours["map"], ours["map50"], ours["recall"]) == pytest.approx(
        (evaluation.stats[0], evaluation.stats[1], evaluation.stats[8]), abs=1e-12)
