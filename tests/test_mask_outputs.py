"""Segmentation outputs: RLE both ways, the mask folder, the RLE and summary CSVs."""
import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.outputs.masks import (FORMATS, MaskOutputError, mask_file_names, read_mask_folder, read_rle_csv,
                                rle_csv, rle_decode, rle_encode, summary_csv, write_mask_folder)
from model.predict import TestImage


def Img(number: int, name: str) -> TestImage:  # noqa: N802  (reads as the test image it makes)
    return TestImage(number, Path("/test") / name)


def rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def test_formats():
    assert FORMATS == ("masks", "rle", "summary")


def corner_masks(shape):
    h, w = shape
    for r, c in [(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1)]:
        m = np.zeros(shape, bool)
        m[r, c] = True
        yield m


@pytest.mark.parametrize("order", ["column", "row"])
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1), (5, 5), (4, 9), (13, 6), (64, 48)])
def test_rle_round_trip(shape, order):
    rng = np.random.default_rng(hash(shape) % 1000)
    masks = [np.zeros(shape, bool), np.ones(shape, bool), *corner_masks(shape)]
    masks += [rng.random(shape) < p for p in (0.05, 0.5, 0.95)]
    for mask in masks:
        text = rle_encode(mask, order)
        decoded = rle_decode(text, shape, order)
        assert decoded.dtype == bool and decoded.shape == shape
        np.testing.assert_array_equal(decoded, mask)
    assert rle_encode(np.zeros(shape, bool), order) == ""
    assert rle_encode(np.ones(shape, bool), order) == f"1 {shape[0] * shape[1]}"


def test_rle_known_example():
    mask = np.zeros((3, 3), bool)
    mask[0, 1] = mask[1, 1] = True
    assert rle_encode(mask) == "4 2"                  # column-major: (0,1) is pixel 4, (1,1) is 5
    assert rle_encode(mask, "column") == "4 2"
    assert rle_encode(mask, "row") == "2 1 5 1"       # row-major: (0,1) is pixel 2, (1,1) is 5
    np.testing.assert_array_equal(rle_decode("4 2", (3, 3)), mask)
    np.testing.assert_array_equal(rle_decode("2 1 5 1", (3, 3), "row"), mask)
    # non-square: pixel (row 1, col 2) of a 2x3 mask is 1 + 2*2 + 1 = 6 column-major, 1*3 + 2 + 1 = 6 row-major;
    # (row 0, col 1) is 3 column-major, 2 row-major
    m = np.zeros((2, 3), bool)
    m[0, 1] = True
    assert rle_encode(m) == "3 1" and rle_encode(m, "row") == "2 1"


def test_rle_decode_tolerates_whitespace_and_adjacent_runs():
    np.testing.assert_array_equal(rle_decode("  1 2\n3 2 ", (2, 2)), np.ones((2, 2), bool))
    assert not rle_decode("", (2, 2)).any()


@pytest.mark.parametrize("text, why", [
    ("1 2 3", "pairs"),
    ("1 x", "whole number"),
    ("1 -2", "whole number"),
    ("1.5 2", "whole number"),
    ("0 2", "1-based"),
    ("1 0", "length"),
    ("8 3", "past"),
    ("1 99999999999999999999999", "past"),
    ("1 10", "past"),
    ("1 3 2 2", "overlap"),
    ("5 1 1 1", "overlap"),
])
def test_rle_decode_errors(text, why):
    with pytest.raises(ValueError, match=why):
        rle_decode(text, (3, 3))


def test_rle_bad_order_and_shape():
    with pytest.raises(ValueError, match="order"):
        rle_encode(np.zeros((2, 2), bool), "diagonal")
    with pytest.raises(ValueError, match="order"):
        rle_decode("", (2, 2), "C")
    with pytest.raises(ValueError, match="shape"):
        rle_encode(np.zeros((2, 2, 3), bool))


def class_masks(shapes, n_classes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n_classes + 1, shape).astype(np.uint8) for shape in shapes]


@pytest.mark.parametrize("values", [(255,), (1, 2), (1000, 40000)])
def test_mask_folder_round_trip(tmp_path, values):
    images = [Img(1, "0001.png"), Img(2, "0002.jpg"), Img(3, "TCGA_x_12.tif")]
    masks = class_masks([(5, 7), (9, 4), (6, 6)], len(values))
    masks[1][:] = 0  # an empty mask
    folder = tmp_path / "out" / "masks"
    paths = write_mask_folder(folder, images, masks, values)
    assert [p.name for p in paths] == ["0001.png", "0002.png", "TCGA_x_12.png"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in paths)  # no temp files left
    with Image.open(paths[0]) as im:
        assert im.mode == ("L" if max(values) < 256 else "I;16")
        assert set(np.unique(np.asarray(im)).tolist()) <= {0, *values}
    read, problems = read_mask_folder(folder, [p.stem for p in paths], values)
    assert problems == []
    for path, mask in zip(paths, masks):
        assert read[path.stem].dtype == np.uint8
        np.testing.assert_array_equal(read[path.stem], mask)


def test_mask_folder_duplicate_stem_never_overwrites(tmp_path):
    images = [Img(1, "0001.png"), Img(2, "0001.jpg"), Img(3, "0001.JPG"), Img(4, "a.png"), Img(5, "A.tif")]
    # compared without case, so no two collide on a case-insensitive file system (Windows, macOS) either
    assert mask_file_names(images) == ["0001.png", "0001.jpg.png", "0001.JPG.2.png", "a.png", "A.tif.png"]
    masks = [np.full((3, 3), i % 2, np.uint8) for i in range(len(images))]
    masks[0][0, 0] = 1
    paths = write_mask_folder(tmp_path, images, masks, (255,))
    assert len({p.name.casefold() for p in paths}) == len(images)
    read, problems = read_mask_folder(tmp_path, [p.stem for p in paths], (255,))
    assert problems == []
    for path, mask in zip(paths, masks):
        np.testing.assert_array_equal(read[path.stem], mask)


def test_mask_file_names_third_collision():
    images = [Img(1, "0001.jpg"), Img(2, "0001.jpg.png"), Img(3, "0001.jpg")]
    assert mask_file_names(images) == ["0001.png", "0001.jpg.png", "0001.jpg.2.png"]


def test_read_mask_folder_problems(tmp_path):
    images = [Img(1, "0001.png"), Img(2, "0002.png")]
    write_mask_folder(tmp_path, images, [np.zeros((4, 4), np.uint8), np.ones((4, 4), np.uint8)], (255,))
    Image.fromarray(np.full((4, 4), 7, np.uint8)).save(tmp_path / "0003.png")  # a value that is no class
    (tmp_path / "0004.png").write_bytes(b"not a png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "0002.tif")    # a second file for 0002
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "9999.png")    # no such image
    (tmp_path / "notes.txt").write_text("hi")
    read, problems = read_mask_folder(tmp_path, ["0001", "0002", "0003", "0004", "0005"], (255,))
    assert sorted(read) == ["0001", "0002"]
    assert read["0002"].all()  # 0002.png, not 0002.tif (which sorts after it)
    text = "\n".join(problems)
    assert "0003.png" in text and "7" in text          # MaskError: unknown value
    assert "0004.png" in text and "cannot read" in text
    assert "0002.tif" in text and "second mask" in text
    assert "1 image(s) have no mask file: 0005" in text
    assert "9999.png" in text and "notes.txt" in text
    with pytest.raises(MaskOutputError):
        read_mask_folder(tmp_path / "nope", ["0001"], (255,))


def test_write_mask_folder_checks(tmp_path):
    images = [Img(1, "0001.png")]
    with pytest.raises(ValueError, match="class ids"):
        write_mask_folder(tmp_path, images, [np.full((2, 2), 3, np.uint8)], (1, 2))
    with pytest.raises(ValueError, match="masks"):
        write_mask_folder(tmp_path, images, [], (255,))
    with pytest.raises(ValueError, match="values"):
        write_mask_folder(tmp_path, images, [np.zeros((2, 2), np.uint8)], (0,))


@pytest.mark.parametrize("order", ["column", "row"])
@pytest.mark.parametrize("id_mode", ["number", "filename"])
def test_rle_csv_round_trip(tmp_path, order, id_mode):
    heads = ("tumour", "cyst")
    images = [Img(1, "0001.png"), Img(2, "0002.png"), Img(7, "x_7.tif")]
    masks = class_masks([(6, 5), (4, 4), (3, 8)], 2, seed=3)
    masks[1][:] = 0
    text = rle_csv(images, masks, heads, order=order, id_header="img_name" if id_mode == "filename" else "id",
                   id_mode=id_mode)
    table = rows(text)
    assert table[0] == ["img_name" if id_mode == "filename" else "id", "class", "rle"]
    assert len(table) == 1 + 3 * 2
    keys = [str(i.id) if id_mode == "number" else i.name for i in images]
    assert [r[0] for r in table[1:]] == [k for k in keys for _ in heads]
    assert [r[1] for r in table[1:]] == list(heads) * 3
    assert table[3][2] == "" and table[4][2] == ""  # the empty mask keeps its rows
    path = tmp_path / "pred.csv"
    path.write_text(text)
    shapes = {k: m.shape for k, m in zip(keys, masks)}
    shapes["99"] = (2, 2)  # in the truth, not predicted: not a problem here
    read, problems = read_rle_csv(path, shapes, heads, order=order)
    assert problems == []
    assert sorted(read) == sorted(keys)
    for key, mask in zip(keys, masks):
        assert read[key].dtype == np.uint8
        np.testing.assert_array_equal(read[key], mask)


def test_rle_csv_one_class_keeps_the_class_column():
    mask = np.zeros((3, 3), np.uint8)
    mask[0, 1] = mask[1, 1] = 1
    assert rows(rle_csv([Img(5, "0005.png")], [mask], ("lesion",))) == [["id", "class", "rle"], ["5", "lesion", "4 2"]]
    assert rows(rle_csv([Img(5, "0005.png")], [mask], ("lesion",), order="row"))[1] == ["5", "lesion", "2 1 5 1"]
    with pytest.raises(ValueError, match="class ids"):
        rle_csv([Img(5, "0005.png")], [mask * 2], ("lesion",))


def test_read_rle_csv_problems(tmp_path):
    heads = ("tumour", "cyst")
    shapes = {"1": (3, 3), "2": (3, 3), "3": (3, 3), "4": (3, 3)}
    path = tmp_path / "pred.csv"
    path.write_text("\ufeffid,class,rle\n"
                    "1,tumour,4 2\n"
                    "1,cyst,1 1\n"
                    "1,tumour,1 9\n"        # duplicate: first used
                    "2,tumour,1 2 3\n"      # malformed: odd count
                    "2,cyst,9 1\n"
                    "3,tumour,0 1\n"        # malformed only: id 3 left out
                    "4,tumour,1 3\n"
                    "4,cyst,3 1\n"          # pixel 3 in both classes
                    "42,tumour,1 1\n"       # unknown id
                    "1,polyp,1 1\n"         # unknown class
                    "1\n")                  # short row
    read, problems = read_rle_csv(path, shapes, heads)
    text = "\n".join(problems)
    assert sorted(read) == ["1", "2", "4"]
    expected = np.zeros((3, 3), np.uint8)
    expected[0, 1] = expected[1, 1] = 1
    expected[0, 0] = 2
    np.testing.assert_array_equal(read["1"], expected)
    assert read["2"].tolist() == [[0, 0, 0], [0, 0, 0], [0, 0, 2]]  # tumour row malformed -> empty, reported
    assert read["4"][:, 0].tolist() == [1, 1, 2]
    assert "line 5 (id 2, class tumour)" in text and "pairs" in text
    assert "line 7 (id 3, class tumour)" in text and "1-based" in text
    assert "line 12: 1 column(s)" in text
    assert "not in the ground truth" in text and "42" in text
    assert "polyp" in text
    assert "more than once" in text and "1/tumour" in text
    assert "no usable row for class tumour (empty there): 2" in text
    assert "more than one class" in text and ": 4" in text


def test_read_rle_csv_unreadable(tmp_path):
    path = tmp_path / "pred.csv"
    path.write_text("id,label\n1,3\n")
    with pytest.raises(MaskOutputError, match="header"):
        read_rle_csv(path, {"1": (2, 2)}, ("a",))
    path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(MaskOutputError, match="UTF-8"):
        read_rle_csv(path, {"1": (2, 2)}, ("a",))
    path.write_text("")
    with pytest.raises(MaskOutputError, match="header"):
        read_rle_csv(path, {"1": (2, 2)}, ("a",))


def test_summary_csv():
    heads = ("benign", "malignant")
    m1 = np.zeros((4, 5), np.uint8)
    m1[0, :3] = 1
    m1[3, 4] = 2
    m2 = np.zeros((2, 2), np.uint8)
    images = [Img(1, "0001.png"), Img(2, "0002.png")]
    probs = np.array([[0.9, 0.1234567], [0.0, 1.0]])
    text = summary_csv(images, [m1, m2], probs, heads)
    assert text == ("id,p_benign,p_malignant,area_benign,area_malignant\n"
                    "1,0.900000,0.123457,3,1\n"
                    "2,0.000000,1.000000,0,0\n")
    named = rows(summary_csv(images, [m1, m2], probs, heads, id_header="img_name", id_mode="filename"))
    assert named[0][0] == "img_name" and [r[0] for r in named[1:]] == ["0001.png", "0002.png"]
    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        summary_csv(images, [m1, m2], probs[:, :1], heads)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        summary_csv(images, [m1, m2], probs + 0.5, heads)
    with pytest.raises(ValueError, match="id_mode"):
        summary_csv(images, [m1, m2], probs, heads, id_mode="uuid")


def test_a_mask_with_values_between_the_classes_is_said_to_be_resized_with_interpolation(tmp_path):
    from model.masks import MaskError, load_mask
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 255
    mask[4, 4:12], mask[11, 4:12], mask[4:12, 4] = 1, 3, 4          # what a linear resize leaves at the border
    Image.fromarray(mask).save(tmp_path / "resized.png")
    with pytest.raises(MaskError, match="resized.png: mask value\\(s\\) 1, 3, 4 .*looks resized with interpolation"):
        load_mask(tmp_path / "resized.png", (255,))
    mask[mask < 255] = 0
    mask[0, 0] = 7                                                   # one stray value: the classes are wrong
    Image.fromarray(mask).save(tmp_path / "other.png")
    with pytest.raises(MaskError, match="set the task's classes: to the values the masks use"):
        load_mask(tmp_path / "other.png", (255,))


def test_a_predicted_mask_of_another_size_names_the_predicted_file_and_the_true_one(tmp_path):
    from model.errors import ScoreError
    from model.outputs.masks import score_mask_task
    from tests.helpers import seg_task
    task = seg_task()
    truth, pred = tmp_path / "gt" / task.test_folder, tmp_path / "pred" / task.output.file
    truth.mkdir(parents=True)
    pred.mkdir(parents=True)
    for stem, predicted_size in (("0001", (20, 30)), ("0002", (10, 15)), ("0003", (10, 15))):
        Image.fromarray(np.zeros((20, 30), np.uint8)).save(truth / f"{stem}_mask.png")
        Image.fromarray(np.zeros(predicted_size, np.uint8)).save(pred / f"{stem}.png")
    with pytest.raises(ScoreError) as e:
        score_mask_task(task, tmp_path / "pred", tmp_path / "gt")
    assert str(e.value) == (f"{pred / '0002.png'}: a predicted mask of 15x10, but the true mask "
                            f"{truth / '0002_mask.png'} is 30x20 (2 mask(s) of another size than the truth: "
                            "['0002', '0003']); masks must be at each image's original size")
