"""Detection outputs: each format written and read back, and what each reader says about a bad file."""
import csv
import io
import json
import re

import numpy as np
import pytest

from model.errors import ScoreError
from model.outputs.boxes import (FORMATS, ImageSummary, format_detections, read_detections, write_detections)

CLASSES = ["RBC", "white, blood cell", "Platelets"]
IDS = ["img_1", "img_2", "img_3"]
PREDICTIONS = [
    (np.array([[10.123456, 20.5, 30.0004, 40.9996], [0, 0, 639.999, 479.5]]), np.array([0.9123456, 0.05]),
     np.array([1, 0])),
    (np.zeros((0, 4)), np.zeros(0), np.zeros(0, int)),          # an image without boxes
    (np.array([[1, 2, 3, 4]], float), np.array([0.5]), np.array([2])),
]
BOX_FORMATS = ("boxes", "prediction-string", "coco")


def rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def test_formats():
    assert FORMATS == ("boxes", "prediction-string", "coco", "summary")


@pytest.mark.parametrize("fmt", BOX_FORMATS)
def test_box_formats_round_trip(tmp_path, fmt):
    path = tmp_path / "out"
    write_detections(path, fmt, IDS, "image_id", CLASSES, PREDICTIONS)
    found = read_detections(path, fmt, "image_id", CLASSES)
    # COCO results cannot list an image without boxes; the others list every image.
    assert list(found) == (["img_1", "img_3"] if fmt == "coco" else IDS)
    for key, (boxes, scores, labels) in zip(IDS, PREDICTIONS):
        if key not in found:
            continue
        np.testing.assert_allclose(found[key].boxes, boxes.reshape(-1, 4), atol=1e-3)
        np.testing.assert_allclose(found[key].scores, scores, atol=1e-6)
        assert found[key].labels.tolist() == labels.tolist() and found[key].boxes.shape == (len(labels), 4)


def test_the_boxes_csv():
    text = format_detections("boxes", IDS, "image_id", CLASSES, PREDICTIONS)
    assert rows(text) == [["image_id", "class", "score", "x1", "y1", "x2", "y2"],
                          ["img_1", "white, blood cell", "0.912346", "10.123", "20.5", "30", "41"],
                          ["img_1", "RBC", "0.05", "0", "0", "639.999", "479.5"],
                          ["img_2", "", "", "", "", "", ""],
                          ["img_3", "Platelets", "0.5", "1", "2", "3", "4"]]
    assert '"white, blood cell"' in text


def test_the_prediction_string_csv():
    assert rows(format_detections("prediction-string", IDS, "id", CLASSES, PREDICTIONS)) == [
        ["id", "PredictionString"], ["img_1", "1 0.912346 10.123 20.5 30 41 0 0.05 0 0 639.999 479.5"],
        ["img_2", ""], ["img_3", "2 0.5 1 2 3 4"]]


def test_the_coco_json():
    entries = json.loads(format_detections("coco", IDS, "id", CLASSES, PREDICTIONS))
    assert entries[2] == {"image_id": "img_3", "category_id": 3, "bbox": [1, 2, 2, 2], "score": 0.5}
    assert [e["category_id"] for e in entries] == [2, 1, 3]
    assert json.loads(format_detections("coco", ["a"], "id", CLASSES, PREDICTIONS[1:2])) == []


def test_the_summary_csv_round_trip(tmp_path):
    path = tmp_path / "summary.csv"
    write_detections(path, "summary", IDS, "id", CLASSES, PREDICTIONS, threshold=[0.5, 0.5, 0.6])
    assert rows(path.read_text()) == [["id", "count_RBC", "count_white, blood cell", "count_Platelets", "max_score"],
                                      ["img_1", "0", "1", "0", "0.912346"], ["img_2", "0", "0", "0", ""],
                                      ["img_3", "0", "0", "0", "0.5"]]
    found = read_detections(path, "summary", "id", CLASSES)
    assert list(found) == IDS and isinstance(found["img_1"], ImageSummary)
    assert found["img_1"].counts.tolist() == [0, 1, 0] and found["img_1"].max_score == pytest.approx(0.912346)
    assert found["img_2"].max_score is None
    write_detections(path, "summary", IDS, "id", CLASSES, PREDICTIONS, threshold=0.05)
    assert read_detections(path, "summary", "id", CLASSES)["img_1"].counts.tolist() == [1, 1, 0]


def test_writers_refuse_what_cannot_be_written(tmp_path):
    with pytest.raises(ValueError, match="3 ids and 2 predictions"):
        format_detections("boxes", IDS, "id", CLASSES, PREDICTIONS[:2])
    with pytest.raises(ValueError, match="not unique"):
        format_detections("boxes", ["a", "a", "b"], "id", CLASSES, PREDICTIONS)
    with pytest.raises(ValueError, match="class indices 0..2"):
        format_detections("boxes", ["a"], "id", CLASSES, [([[0, 0, 1, 1]], [0.5], [3])])
    with pytest.raises(ValueError, match="one of boxes"):
        format_detections("yolo", IDS, "id", CLASSES, PREDICTIONS)


def test_writing_is_atomic(tmp_path):
    path = tmp_path / "out.csv"
    path.write_text("old")
    with pytest.raises(ValueError):
        write_detections(path, "boxes", IDS, "id", CLASSES, PREDICTIONS[:1])
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def read_text(tmp_path, fmt, text, id_header="id"):
    path = tmp_path / "pred"
    path.write_text(text)
    return read_detections(path, fmt, id_header, CLASSES)


def test_the_boxes_reader_takes_an_ids_rows_anywhere_and_skips_blank_lines(tmp_path):
    found = read_text(tmp_path, "boxes", "id,class,score,x1,y1,x2,y2\na,RBC,0.9,0,0,1,1\nb,,,,,,\n\n"
                                         "a,Platelets,0.4,2,2,3,3\nb,,,,,,\n")
    assert found["a"].labels.tolist() == [0, 2] and found["b"].boxes.shape == (0, 4)


@pytest.mark.parametrize("body, why", [
    ("a,RBC,high,0,0,1,1", "line 2: score 'high' is not a number"),
    ("a,RBC,0.9,0,0,nan,1", "line 2: x2 'nan' is not a number"),
    ("a,WBC,0.9,0,0,1,1", "line 2: unknown class 'WBC'; the classes are RBC, white, blood cell, Platelets"),
    ("a,RBC,0.9,5,0,1,1", "line 2: x2 < x1 in box (5, 0, 1, 1)"),
    ("a,RBC,,0,0,1,1", "line 2: empty score: a box needs every column, and an image without boxes leaves them"),
    (",RBC,0.9,0,0,1,1", "line 2: no id"),
])
def test_the_boxes_readers_errors(tmp_path, body, why):
    with pytest.raises(ScoreError, match="^" + re.escape(f"{tmp_path / 'pred'}: {why}")):
        read_text(tmp_path, "boxes", f"id,class,score,x1,y1,x2,y2\n{body}\nb,RBC,0.9,0,0,1,1\n")


def test_a_reader_names_every_bad_line_up_to_five(tmp_path):
    body = "".join(f"a,RBC,x{i},0,0,1,1\n" for i in range(7))
    with pytest.raises(ScoreError) as error:
        read_text(tmp_path, "boxes", "id,class,score,x1,y1,x2,y2\n" + body)
    message = str(error.value)
    assert "line 2: score 'x0'" in message and "line 6: score 'x4'" in message and "x5" not in message
    assert message.endswith("(and 2 more)") and "\n" not in message


def test_a_missing_column_is_named(tmp_path):
    with pytest.raises(ScoreError, match=r"lacks \['score'\]"):
        read_text(tmp_path, "boxes", "id,class,x1,y1,x2,y2\n")


@pytest.mark.parametrize("body, why", [
    ("a,0 0.9 0 0 1\n", "line 2: 5 values: it should be groups of six, class score x1 y1 x2 y2"),
    ("a,3 0.9 0 0 1 1\n", "line 2: class '3' is not a class index 0..2"),
    ("a,0 0.9 0 0 1 1\nb,\na,\n", "line 4: id 'a' again \\(one row per image\\)"),
    ("a,0 0.9 0 zero 1 1\n", "line 2: y1 'zero' is not a number"),
])
def test_the_prediction_string_readers_errors(tmp_path, body, why):
    with pytest.raises(ScoreError, match=why):
        read_text(tmp_path, "prediction-string", "id,PredictionString\n" + body)


@pytest.mark.parametrize("entries, why", [
    ([{"image_id": "a", "category_id": 0, "bbox": [0, 0, 1, 1], "score": 0.5}],
     "result 1: category_id 0 is not 1..3, the task's classes in order"),
    ([{"image_id": "a", "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}, {"image_id": "a"}],
     "result 2: should be an object with image_id, category_id, bbox, score"),
    ([{"image_id": "a", "category_id": 1, "bbox": [0, 0, -1, 1], "score": 0.5}],
     "result 1: bbox \\[0, 0, -1, 1\\] has a negative width or height"),
    ([{"image_id": "a", "category_id": 1, "bbox": [0, 0, 1], "score": 0.5}], "result 1: bbox"),
    ([{"image_id": "a", "category_id": 1, "bbox": [0, 0, 1, 1], "score": "high"}],
     "result 1: score 'high' is not a number"),
    ({"annotations": []}, "a COCO results file is a list of results, found a dict"),
])
def test_the_coco_readers_errors(tmp_path, entries, why):
    with pytest.raises(ScoreError, match=why):
        read_text(tmp_path, "coco", json.dumps(entries))
    with pytest.raises(ScoreError, match="cannot be read as JSON"):
        read_text(tmp_path, "coco", "[{")


def test_the_coco_reader_takes_numbers_as_ids(tmp_path):
    found = read_text(tmp_path, "coco", json.dumps([{"image_id": 7, "category_id": 3, "bbox": [1, 2, 3, 4],
                                                     "score": 0.25}]))
    assert list(found) == ["7"] and found["7"].boxes.tolist() == [[1, 2, 4, 6]] and found["7"].labels.tolist() == [2]


@pytest.mark.parametrize("body, why", [
    ("a,1,x,0,0.5\n", "line 2: count_white, blood cell 'x' is not a count"),
    ("a,1,0,-1,0.5\n", "line 2: count_Platelets '-1' is not a count"),
    ("a,1,0,0,best\n", "line 2: max_score 'best' is not a number"),
    ("a,1,0,0,0.5\na,0,0,0,\n", "line 3: id 'a' again"),
])
def test_the_summary_readers_errors(tmp_path, body, why):
    with pytest.raises(ScoreError, match=why):
        read_text(tmp_path, "summary", '"id","count_RBC","count_white, blood cell","count_Platelets","max_score"\n'
                  + body)


def test_an_unreadable_file_is_a_score_error(tmp_path):
    for fmt in FORMATS:
        with pytest.raises(ScoreError, match="cannot be read"):
            read_detections(tmp_path / "absent.csv", fmt, "id", CLASSES)
