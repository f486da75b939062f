"""Box geometry: the checks a reader runs, the TTA un-flip, fusion of views, boxes from a mask."""
import numpy as np
import pytest

from model.boxes import as_detections, boxes_from_mask, check_boxes, flip_boxes, fuse

EMPTY = (np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))


def test_check_boxes_keeps_good_boxes_and_says_what_it_did_with_the_others():
    boxes = [[1, 1, 5, 5], [3, 3, 3, 8], [-2, 1, 5, 500], [700, 1, 800, 5], [5, 1, 2, 5], [np.nan, 1, 2, 3],
             [1, 1, 2, 2], [10, 470, 20, 480.005]]
    checked = check_boxes(boxes, [0, 1, 0, 0, 0, 0, 5, 2], 640, 480, 3, "a.xml", ["RBC", "WBC", "Platelets"])
    assert checked.boxes.tolist() == [[1, 1, 5, 5], [0, 1, 5, 480], [10, 470, 20, 480]]
    assert checked.labels.tolist() == [0, 0, 2] and checked.labels.dtype == np.int64
    assert checked.dropped == ["a.xml: box 2 (3, 3, 3, 8) of class 'WBC': zero width, dropped"]
    assert checked.clipped == ["a.xml: box 3 (-2, 1, 5, 500) of class 'RBC': partly outside the 640x480 image, "
                               "clipped to (0, 1, 5, 480)"]
    assert checked.problems == [
        "a.xml: box 4 (700, 1, 800, 5) of class 'RBC': wholly outside the 640x480 image",
        "a.xml: box 5 (5, 1, 2, 5) of class 'RBC': x2 < x1; corners must be top-left then bottom-right "
        "(is the file's box format xyxy or xywh?)",
        "a.xml: box 6 (nan, 1, 2, 3) of class 'RBC': a coordinate is not a finite number",
        "a.xml: box 7 (1, 1, 2, 2) of class 5: unknown class, the classes are 0..2"]


def test_check_boxes_edges():
    # A box may reach the far edge (x2 exclusive); one that starts on it has no pixel inside.
    checked = check_boxes([[630, 470, 640, 480], [640, 0, 650, 10], [0, 0, 4, 0]], [0, 0, 0], 640, 480, 1, "f")
    assert checked.boxes.tolist() == [[630, 470, 640, 480]] and not checked.clipped
    assert checked.problems == ["f: box 2 (640, 0, 650, 10) of class 0: wholly outside the 640x480 image"]
    assert checked.dropped == ["f: box 3 (0, 0, 4, 0) of class 0: zero height, dropped"]


def test_check_boxes_of_an_image_without_objects():
    for boxes in ([], np.zeros((0, 4))):
        checked = check_boxes(boxes, [], 10, 10, 2, "empty.txt")
        assert checked.boxes.shape == (0, 4) and checked.labels.shape == (0,)
        assert checked.dropped == checked.clipped == checked.problems == []


def test_check_boxes_wrong_shapes_are_our_errors():
    with pytest.raises(ValueError, match="one label per box"):
        check_boxes([[0, 0, 1, 1]], [], 10, 10, 1, "f")
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        check_boxes([[0, 0, 1]], [0], 10, 10, 1, "f")


def test_flip_boxes():
    boxes = np.array([[10, 20, 30, 40], [0, 0, 100, 50]], float)
    assert flip_boxes(boxes, 100, 50, True, False).tolist() == [[70, 20, 90, 40], [0, 0, 100, 50]]
    assert flip_boxes(boxes, 100, 50, False, True).tolist() == [[10, 10, 30, 30], [0, 0, 100, 50]]
    for h in (False, True):
        for v in (False, True):
            np.testing.assert_array_equal(flip_boxes(flip_boxes(boxes, 100, 50, h, v), 100, 50, h, v), boxes)
    assert flip_boxes(np.zeros((0, 4)), 100, 50, True, True).shape == (0, 4)


def test_flip_boxes_agree_with_flipping_the_pixels():
    ids = np.zeros((7, 9), np.uint8)
    ids[1:3, 2:6] = 1
    boxes, _ = boxes_from_mask(ids, 1)
    flipped, _ = boxes_from_mask(ids[::-1, ::-1], 1)
    np.testing.assert_array_equal(flip_boxes(boxes, 9, 7, True, True), flipped)


def view(boxes, scores, labels):
    return np.array(boxes, float), np.array(scores, float), np.array(labels)


def test_wbf_scores_a_box_by_its_mean_times_the_share_of_views_that_found_it():
    a = view([[10, 10, 50, 50], [60, 60, 90, 90]], [0.9, 0.4], [0, 1])
    b = view([[12, 10, 52, 50]], [0.7], [0])
    boxes, scores, labels = fuse([a, b, EMPTY], 100, 100)
    np.testing.assert_allclose(scores, [0.8 * 2 / 3, 0.4 / 3], atol=1e-6)
    np.testing.assert_allclose(boxes, [[(10 * 0.9 + 12 * 0.7) / 1.6, 10, (50 * 0.9 + 52 * 0.7) / 1.6, 50],
                                       [60, 60, 90, 90]], atol=1e-3)
    assert labels.tolist() == [0, 1] and labels.dtype == np.int64
    # The same box from every view keeps its score, whatever the number of views...
    for n in (1, 2, 5):
        np.testing.assert_allclose(fuse([a] * n, 100, 100).scores, [0.9, 0.4], atol=1e-6)
    # ...and weights weigh the views.
    np.testing.assert_allclose(fuse([a, EMPTY], 100, 100, weights=[3, 1]).scores, [0.9 * 3 / 4, 0.4 * 3 / 4],
                               atol=1e-6)


def test_wbf_merges_one_views_own_duplicates_scored_their_mean():
    one = view([[10, 10, 50, 50], [10, 10, 51, 50]], [0.8, 0.6], [0, 0])
    assert len(fuse([one], 100, 100).boxes) == 1
    np.testing.assert_allclose(fuse([one], 100, 100).scores, [0.7], atol=1e-6)
    np.testing.assert_allclose(fuse([one, EMPTY], 100, 100).scores, [0.35], atol=1e-6)


def test_fuse_skips_low_scores_clips_and_keeps_classes_apart():
    a = view([[-10, 90, 50, 120], [0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.05, 0.6], [0, 0, 1])
    for method in ("wbf", "nms"):
        boxes, scores, labels = fuse([a], 100, 100, method=method, skip=0.1)
        np.testing.assert_allclose(boxes, [[0, 90, 50, 100], [0, 0, 10, 10]], atol=1e-3)
        np.testing.assert_allclose(scores, [0.9, 0.6], atol=1e-6)
        assert labels.tolist() == [0, 1]


def test_nms_keeps_the_best_box_with_its_own_score():
    a = view([[10, 10, 50, 50]], [0.5], [0])
    b = view([[12, 10, 52, 50], [70, 70, 80, 80]], [0.7, 0.2], [0, 0])
    boxes, scores, labels = fuse([a, b], 100, 100, method="nms")
    np.testing.assert_allclose(boxes, [[12, 10, 52, 50], [70, 70, 80, 80]], atol=1e-6)
    np.testing.assert_allclose(scores, [0.7, 0.2])
    # Weights scale by weight / largest weight: equal weights change nothing.
    np.testing.assert_allclose(fuse([a, b], 100, 100, method="nms", weights=[2, 2]).scores, [0.7, 0.2])
    np.testing.assert_allclose(fuse([a, b], 100, 100, method="nms", weights=[1, 0.5]).scores, [0.5, 0.1])
    assert fuse([a, b], 100, 100, method="nms", iou=0.99).boxes.shape == (3, 4)


@pytest.mark.parametrize("method", ["wbf", "nms"])
def test_fuse_without_any_box(method):
    for views in ([], [EMPTY], [EMPTY, EMPTY], [view([[0, 0, 5, 5]], [0.01], [0])]):
        boxes, scores, labels = fuse(views, 100, 100, method=method, skip=0.5)
        assert boxes.shape == (0, 4) and scores.shape == (0,) and labels.shape == (0,)


def test_fuse_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="wbf, nms"):
        fuse([EMPTY], 10, 10, method="soft")
    with pytest.raises(ValueError, match="2 weights for 1 views"):
        fuse([EMPTY], 10, 10, weights=[1, 2])
    with pytest.raises(ValueError, match="one of each per box"):
        fuse([(np.zeros((1, 4)), [0.5, 0.5], [0])], 10, 10)


def test_boxes_from_mask_one_box_per_8_connected_component_of_each_class():
    ids = np.zeros((6, 8), np.uint8)
    ids[0, 0] = ids[1, 1] = 1        # diagonal neighbours: one component
    ids[5, 0] = 1
    ids[3:5, 4:8] = 2
    boxes, labels = boxes_from_mask(ids, 3)
    assert boxes.tolist() == [[0, 0, 2, 2], [0, 5, 1, 6], [4, 3, 8, 5]]   # x2 exclusive, like COCO's x + w
    assert labels.tolist() == [0, 0, 1] and boxes.dtype == np.float64 and labels.dtype == np.int64
    assert check_boxes(boxes, labels, 8, 6, 3, "mask.png").boxes.tolist() == boxes.tolist()
    none, no_labels = boxes_from_mask(np.zeros((4, 4), np.uint8), 2)
    assert none.shape == (0, 4) and no_labels.shape == (0,)
    with pytest.raises(ValueError, match="class ids should be 0..1"):
        boxes_from_mask(ids, 1)


def test_as_detections_shapes():
    d = as_detections([], [], [])
    assert d.boxes.shape == (0, 4) and d.scores.dtype == np.float64 and d.labels.dtype == np.int64
