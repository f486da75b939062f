import collections
import os

import numpy as np
import pytest

from model.images import load_rgb
from model.metric import UNKNOWN
from model.readers import read_dataset
from model.task import TaskFileError, load_task
from tests.helpers import (BUSI, CLA_FOLDERS, CLA_TASK, FEA_TASK, PROJECT, SHARED_DATA, fake_ultrasound, generic_task,
                           make_cla_data, make_class_folders, make_fea_data, save_image, write_task)


def read(task, data):
    """(dataset root, samples) with the reader's problems raised as one error, as training does."""
    root, result = read_dataset(task, data)
    if result.problems:
        raise AssertionError("\n".join(result.problems))
    return root, result.samples


@pytest.mark.parametrize("level", ["root", "task", "train"])
def test_yolo_folders_accept_each_level(tmp_path, level):
    root = make_cla_data(tmp_path / "comp", per_class=2)
    data = {"root": root, "task": root / "乳腺分类训练数据集", "train": root / "乳腺分类训练数据集" / "train"}[level]
    found_root, samples = read(CLA_TASK, data)
    assert len(samples) == 12 and found_root == root
    assert collections.Counter(s.labels[0] for s in samples) == {c: 2 for c in range(6)}
    assert samples[0].key == "乳腺分类训练数据集/train/2类/images/img000.jpg"
    assert samples[0].boxes == ((0.5, 0.5, 0.3, 0.25),)


def test_yolo_folders_several_lines_of_one_class_are_fine(tmp_path):
    root = make_cla_data(tmp_path, per_class=1)
    (root / "乳腺分类训练数据集/train/3类/labels/img001.txt").write_text("2 0.5 0.5 0.2 0.2\n2 0.3 0.3 0.1 0.1\n")
    sample = [s for s in read(CLA_TASK, root)[1] if s.path.stem == "img001"][0]
    assert sample.labels == (1,) and len(sample.boxes) == 2


def test_yolo_folders_list_every_problem_at_once(tmp_path):
    root = make_cla_data(tmp_path, per_class=2)
    train = root / "乳腺分类训练数据集" / "train"
    (train / "2类/labels/img000.txt").unlink()                                    # image without label
    (train / "2类/labels/ghost.txt").write_text("1 0.5 0.5 0.1 0.1\n")          # label without image
    (train / "3类/labels/img002.txt").write_text("2 0.5 0.5 0.1 0.1\n3 0.5 0.5 0.1 0.1\n")  # conflict
    (train / "4A类/labels/img004.txt").write_text("7 0.5 0.5 0.1 0.1\n")        # unknown class id
    (train / "4B类/labels/img006.txt").write_text("1 0.5 0.5 0.1 0.1\n")        # wrong folder
    for p in [*(train / "5类/images").iterdir(), *(train / "5类/labels").iterdir()]:  # empty class folder
        p.unlink()
    (train / "7类/images").mkdir(parents=True)                                   # a class the task lacks
    _, result = read_dataset(CLA_TASK, root)
    message = "\n".join(result.problems)
    assert len(result.problems) == 7, message
    assert f"{train / '2类/images/img000.jpg'}: no label file" in message
    assert f"{train / '2类/labels/ghost.txt'}: label file without an image" in message
    assert "img002.txt: lines disagree on the class ([2, 3])" in message
    assert "img004.txt:1: class id 7 is not one of 1, 2, 3, 4, 5, 6" in message
    assert "img006.txt: class id 1 (2类) but the file lies in 4B类" in message
    assert f"{train / '5类'}: class folder has no images" in message
    assert f"{train / '7类'}: folder is not one of the class folders" in message
    assert {p.name for p in result.unlabelled} == {"img000.jpg", "img002.jpg", "img004.jpg", "img006.jpg"}


def test_missing_data_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no cla training data here. Expected 乳腺分类训练数据集/train/ with one"):
        read_dataset(CLA_TASK, tmp_path)
    with pytest.raises(FileNotFoundError, match="training data not found"):
        read_dataset(CLA_TASK, tmp_path / "nowhere")


def test_label_folders_keep_unknown_labels(tmp_path):
    root = make_fea_data(tmp_path, n=8, unknown={"calcification": [3]})
    (root / "乳腺特征训练数据集/train/shape_labels/f005.txt").unlink()  # missing file: unknown too
    samples = {s.path.stem: s for s in read(FEA_TASK, root / "乳腺特征训练数据集" / "train")[1]}
    assert samples["f003"].labels == (1, UNKNOWN, 0, 0)
    assert samples["f005"].labels == (1, 0, 1, UNKNOWN)
    assert samples["f007"].labels == (1, 1, 1, 0)
    assert samples["f000"].boxes == ((0.5, 0.5, 0.3, 0.25),)


def test_label_folders_reject_bad_first_token_and_orphans(tmp_path):
    root = make_fea_data(tmp_path, n=4)
    train = root / "乳腺特征训练数据集" / "train"
    (train / "direction_labels/f001.txt").write_text("2 0.5 0.5 0.1 0.1\n")
    (train / "shape_labels/nothing.txt").write_text("1\n")
    (train / "margin_labels").mkdir()
    message = "\n".join(read_dataset(FEA_TASK, root)[1].problems)
    assert "f001.txt: first token '2' is not 0 or 1" in message
    assert "nothing.txt: label file without an image" in message
    assert "margin_labels: folder is not one of the image and label folders" in message


BUSI_TASK = """\
name: busi
kind: single-label
classes: [benign, malignant, normal]
data: {reader: class-folders}
"""


def test_class_folders_read_names_with_spaces_and_report_strays(tmp_path):
    task = load_task(write_task(tmp_path / "busi.yaml", BUSI_TASK))
    data = make_class_folders(tmp_path / "data")
    (data / "benign" / "notes.txt").write_text("x")
    (data / "benign" / "masks").mkdir()
    os.mkfifo(data / "benign" / "pipe.png")  # named like an image: never opened
    root, result = read_dataset(task, data)
    assert result.problems == [] and root == data and len(result.samples) == 18
    assert result.samples[0].key == "benign/benign (1).jpg" and result.samples[0].labels == (0,)
    (data / "Benign").mkdir()
    (data / "normal").rename(data / "normals")
    message = "\n".join(read_dataset(task, data)[1].problems)
    assert f"{data / 'Benign'}: folder is not one of the class folders (benign, malignant, normal)" in message
    assert f"{data / 'normal'}: class folder missing" in message


CSV_TASK = """\
name: grade
kind: single-label
classes: [low, high]
data:
  reader: csv
  file: labels.csv
  image_column: path
  label_column: grade
  class_values: ["0", "1"]
  group_column: patient
  box_columns: [x0, y0, x1, y1]
"""


def make_csv_data(root, rows):
    for i in range(6):
        save_image(root / "img" / f"s{i}.png", fake_ultrasound(i, (50, 100)))
    (root / "labels.csv").write_text("path,grade,patient,x0,y0,x1,y1\n" + "".join(r + "\n" for r in rows))
    return root


def test_csv_reader_reads_labels_groups_and_pixel_boxes(tmp_path):
    task = load_task(write_task(tmp_path / "t.yaml", CSV_TASK))
    data = make_csv_data(tmp_path / "data", ["img/s0.png,0,P1,10,5,60,45", "img/s1.png,1,P1,,,,", "img/s2.png,1,P2,,,,"])
    root, samples = read(task, data / "labels.csv")
    assert root == data and [s.key for s in samples] == ["img/s0.png", "img/s1.png", "img/s2.png"]
    assert [s.labels for s in samples] == [(0,), (1,), (1,)] and [s.group for s in samples] == ["P1", "P1", "P2"]
    assert samples[0].boxes == ((0.35, 0.5, 0.5, 0.8),) and samples[1].boxes == ()


def test_csv_reader_measures_boxes_on_the_upright_image_in_the_format_and_units_given(tmp_path):
    from PIL import Image
    exif = Image.Exif()
    exif[0x0112] = 6                                    # stored 100 wide, 50 high; shown 50 wide, 100 high
    Image.fromarray(fake_ultrasound(0, (50, 100))).save(tmp_path / "turned.png", exif=exif)
    (tmp_path / "train.csv").write_text("image,label,x,y,w,h\nturned.png,low,10,20,30,40\n")
    task = generic_task("grade", heads=("low", "high"),
                        data={"reader": "csv", "box_columns": ["x", "y", "w", "h"], "box_format": "xywh"})
    (sample,) = read(task, tmp_path)[1]
    assert sample.boxes == ((25 / 50, 40 / 100, 30 / 50, 40 / 100),)
    relative = generic_task("grade", heads=("low", "high"), data={"reader": "csv", "box_columns": ["x", "y", "w", "h"],
                                                                  "box_units": "relative"})
    (tmp_path / "train.csv").write_text("image,label,x,y,w,h\nturned.png,low,0.1,0.2,0.5,0.6\n")
    np.testing.assert_allclose(read(relative, tmp_path)[1][0].boxes, [(0.3, 0.4, 0.4, 0.4)])


def test_csv_reader_reports_every_bad_row(tmp_path):
    task = load_task(write_task(tmp_path / "t.yaml", CSV_TASK))
    data = make_csv_data(tmp_path / "data", ["img/s0.png,0,P1,,,,", "img/gone.png,1,P1,,,,", "img/s1.png,2,P2,,,,",
                                             "img/s0.png,1,P3,,,,", "img/s2.png,1,,,,,", "img/s3.png,0,P4,1,2,x,4",
                                             "img/s4.png,0,P4,90,1,80,40"])
    _, result = read_dataset(task, data)
    message = "\n".join(result.problems)
    assert len(result.problems) == 6, message
    assert f"{data / 'labels.csv'}:3: image 'img/gone.png' not found" in message
    assert "labels.csv:4: grade='2' is not one of the classes (0, 1)" in message
    assert "labels.csv:5: image 'img/s0.png' is already on line 2; one row per image" in message
    assert "labels.csv:6: empty patient; every image needs its group" in message
    assert "labels.csv:7: box ['1', '2', 'x', '4'] is not four numbers" in message
    assert "labels.csv:8: box ['90', '1', '80', '40'] is empty inside the 100x50 image" in message
    (data / "labels.csv").write_text("file,grade\nimg/s0.png,0\n")
    assert "no column(s) ['path', 'patient', 'x0', 'y0', 'x1', 'y1']" in read_dataset(task, data)[1].problems[0]


def test_csv_reader_multi_label_with_unknowns(tmp_path):
    task = generic_task("subtypes", "multi-label", ("a", "b"), data={"reader": "csv"})
    for i in range(3):
        save_image(tmp_path / f"{i}.png", fake_ultrasound(i))
    (tmp_path / "train.csv").write_text("image,a,b\n0.png,1,\n1.png,0,1\n2.png,,0\n")
    _, samples = read(task, tmp_path)
    assert [s.labels for s in samples] == [(1, UNKNOWN), (0, 1), (UNKNOWN, 0)]


@pytest.mark.parametrize("text, message", [
    ("name: x\nkind: single-label\nclases: [a, b]\n", r"unknown key 'clases'; did you mean 'classes'\?"),
    ("name: x\nkind: single-labels\nclasses: [a, b]\n", r"kind 'single-labels': choose single-label, multi-label, detection, segmentation"),
    ("name: x\nkind: multi-label\nclasses: [a, b]\n", r"a multi-label task lists labels:, not classes:"),
    ("name: x\nkind: single-label\nclasses: [a]\n", r"classes: required, a list of at least 2 names"),
    ("name: x\nkind: single-label\nclasses: [a, a]\n", r"names must be non-empty and distinct"),
    ("name: x\nkind: single-label\nclasses: [a, b]\nmetric: f1\n", r"metric 'f1': a single-label task is scored by competition"),
    ("name: x\nkind: single-label\nclasses: [a, b]\ndata: {reader: folders}\n", r"reader 'folders': choose one of"),
    ("name: x\nkind: single-label\nclasses: [a, b]\ndata: {reader: class-folders, class_folder: [a, b]}\n",
     r"unknown key 'class_folder'; did you mean 'class_folders'\?"),
    ("name: x\nkind: single-label\nclasses: [a, b]\ndata: {reader: label-folders}\n",
     r"reader label-folders reads multi-label tasks, not single-label"),
    ("name: x\nkind: single-label\nclasses: [a, b]\noutput: {ids: number}\n", r"output: unknown key 'ids'; did you mean 'id'"),
    ("name: x\nkind: single-label\nclasses: [a, b]\noutput: {file: ../x.csv}\n", r"a plain file name ending in .csv"),
    ("name: x\nkind: multi-label\nlabels: [a, b]\noutput: {values: names}\n", r"a multi-label task writes labels or probabilities"),
    ("name: x\nkind: single-label\nclasses: [a, b, c]\npositive: a\n", r"positive: applies to single-label tasks of two"),
    ("- a\n- b\n", r"expected a mapping of task keys"),
])
def test_a_task_file_with_a_wrong_key_or_value_is_refused(tmp_path, text, message):
    with pytest.raises(TaskFileError, match=message):
        load_task(write_task(tmp_path / "task.yaml", text))


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data/breast-lesions-usg is not present")
def test_birads_readers_on_the_real_dev_data():
    _, cla = read(CLA_TASK, SHARED_DATA)
    assert collections.Counter(CLA_FOLDERS[s.labels[0]] for s in cla) == \
        {"2类": 18, "3类": 22, "4A类": 26, "4B类": 27, "4C类": 30, "5类": 27}
    _, fea = read(FEA_TASK, SHARED_DATA)
    assert len(fea) == 150 and [sum(s.labels[j] == 1 for s in fea) for j in range(4)] == [82, 14, 22, 86]
    for sample in cla[::10] + fea[::10]:
        h, w = load_rgb(sample.path).shape[:2]
        assert sample.boxes
        for xc, yc, bw, bh in sample.boxes:
            assert 0 <= (xc - bw / 2) * w and (xc + bw / 2) * w <= w + 1
            assert 0 <= (yc - bh / 2) * h and (yc + bh / 2) * h <= h + 1


@pytest.mark.skipif(not BUSI.is_dir(), reason="../shared/data/busi is not present")
def test_class_folders_on_busi():
    task = load_task(PROJECT / "tasks" / "examples" / "busi.yaml")
    root, samples = read(task, BUSI)
    assert len(samples) == 780 and collections.Counter(s.labels[0] for s in samples) == {0: 437, 1: 210, 2: 133}
    assert "benign/benign (1).jpg" in {s.key for s in samples}
