import collections

import pytest

from model.data import DatasetError, dataset_name, read_cla, read_fea
from model.images import load_rgb
from model.tasks import CLA, CLA_FOLDERS, UNKNOWN
from tests.helpers import SHARED_DATA, make_cla_data, make_fea_data


@pytest.mark.parametrize("level", ["root", "task", "train"])
def test_cla_reader_accepts_each_level(tmp_path, level):
    root = make_cla_data(tmp_path / "comp", per_class=2)
    data = {"root": root, "task": root / "乳腺分类训练数据集", "train": root / "乳腺分类训练数据集" / "train"}[level]
    samples = read_cla(data)
    assert len(samples) == 12
    assert collections.Counter(s.labels[0] for s in samples) == {c: 2 for c in range(6)}
    assert samples[0].key == "乳腺分类训练数据集/train/2类/images/img000.jpg"
    assert samples[0].boxes == ((0.5, 0.5, 0.3, 0.25),)
    assert dataset_name(data, CLA) == "comp"


def test_cla_several_lines_same_class_are_fine(tmp_path):
    root = make_cla_data(tmp_path, per_class=1)
    (root / "乳腺分类训练数据集/train/3类/labels/img001.txt").write_text("2 0.5 0.5 0.2 0.2\n2 0.3 0.3 0.1 0.1\n")
    sample = [s for s in read_cla(root) if s.path.stem == "img001"][0]
    assert sample.labels == (1,) and len(sample.boxes) == 2


def test_cla_reader_lists_every_problem(tmp_path):
    root = make_cla_data(tmp_path, per_class=2)
    train = root / "乳腺分类训练数据集" / "train"
    (train / "2类/labels/img000.txt").unlink()                                    # image without label
    (train / "2类/labels/ghost.txt").write_text("1 0.5 0.5 0.1 0.1\n")          # label without image
    (train / "3类/labels/img002.txt").write_text("2 0.5 0.5 0.1 0.1\n3 0.5 0.5 0.1 0.1\n")  # conflict
    (train / "4A类/labels/img004.txt").write_text("7 0.5 0.5 0.1 0.1\n")        # unknown class id
    (train / "4B类/labels/img006.txt").write_text("1 0.5 0.5 0.1 0.1\n")        # wrong folder
    for p in (train / "5类/images").iterdir():                                   # empty class folder
        p.unlink()
    for p in (train / "5类/labels").iterdir():
        p.unlink()
    with pytest.raises(DatasetError) as info:
        read_cla(root)
    message = str(info.value)
    assert "6 problem(s)" in message
    assert f"{train / '2类/images/img000.jpg'}: no label file" in message
    assert f"{train / '2类/labels/ghost.txt'}: label file without an image" in message
    assert "img002.txt: lines disagree on the class ([2, 3])" in message
    assert "img004.txt:1: class id 7 is not one of 1..6" in message
    assert "img006.txt: class id 1 (2类) but the file lies in 4B类" in message
    assert f"{train / '5类'}: class folder has no images" in message


def test_missing_data_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no cla training data here"):
        read_cla(tmp_path)


def test_fea_reader_keeps_unknown_labels(tmp_path):
    root = make_fea_data(tmp_path, n=8, unknown={"calcification": [3]})
    (root / "乳腺特征训练数据集/train/shape_labels/f005.txt").unlink()  # missing file: unknown too
    samples = {s.path.stem: s for s in read_fea(root / "乳腺特征训练数据集" / "train")}
    assert samples["f003"].labels == (1, UNKNOWN, 0, 0)
    assert samples["f005"].labels == (1, 0, 1, UNKNOWN)
    assert samples["f007"].labels == (1, 1, 1, 0)
    assert samples["f000"].boxes == ((0.5, 0.5, 0.3, 0.25),)


def test_fea_reader_rejects_bad_first_token_and_orphans(tmp_path):
    root = make_fea_data(tmp_path, n=4)
    train = root / "乳腺特征训练数据集" / "train"
    (train / "direction_labels/f001.txt").write_text("2 0.5 0.5 0.1 0.1\n")
    (train / "shape_labels/nothing.txt").write_text("1\n")
    with pytest.raises(DatasetError) as info:
        read_fea(root)
    assert "f001.txt: first token '2' is not 0 or 1" in str(info.value)
    assert "nothing.txt: label file without an image" in str(info.value)


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data/breast-lesions-usg is not present")
def test_readers_on_the_real_dev_data():
    cla = read_cla(SHARED_DATA)
    counts = collections.Counter(CLA_FOLDERS[s.labels[0]] for s in cla)
    assert counts == {"2类": 18, "3类": 22, "4A类": 26, "4B类": 27, "4C类": 30, "5类": 27}
    fea = read_fea(SHARED_DATA)
    assert len(fea) == 150
    assert [sum(s.labels[j] == 1 for s in fea) for j in range(4)] == [82, 14, 22, 86]
    for sample in cla[::10] + fea[::10]:
        h, w = load_rgb(sample.path).shape[:2]
        assert sample.boxes
        for xc, yc, bw, bh in sample.boxes:
            assert 0 <= (xc - bw / 2) * w and (xc + bw / 2) * w <= w + 1
            assert 0 <= (yc - bh / 2) * h and (yc + bh / 2) * h <= h + 1
