import numpy as np
import pytest
from sklearn.metrics import f1_score

from model.metric import cla_score, fea_score, feature_score, overall_score
from model.score import main as score_main
from model.score import score_folder
from model.tasks import UNKNOWN


def test_cla_score_by_hand():
    s = cla_score([0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0])
    # F1: class 0 = 2*1/(2+2) = .5, class 1 = 2*2/(2+3) = .8, class 2 = 2*1/(2+1) = 2/3
    assert s["accuracy"] == pytest.approx(4 / 6)
    assert s["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert s["score"] == pytest.approx(0.6 * 4 / 6 + 0.4 * (0.5 + 0.8 + 2 / 3) / 3)


def test_cla_macro_f1_matches_sklearn():
    rng = np.random.default_rng(0)
    for _ in range(50):
        t, p = rng.integers(0, 6, 40), rng.integers(0, 6, 40)
        assert cla_score(t, p)["macro_f1"] == pytest.approx(f1_score(t, p, average="macro", zero_division=0))


def test_missing_prediction_is_wrong_but_no_class():
    # -1 (no prediction) lowers accuracy and recall, but is not averaged in as a seventh class.
    s = cla_score([0, 1], [0, -1])
    assert s["accuracy"] == 0.5 and s["macro_f1"] == pytest.approx((1.0 + 0.0) / 2)


def test_feature_and_fea_score_by_hand():
    s = feature_score([1, 0, 1, 0], [1, 1, 0, 0])
    assert (s["accuracy"], s["f1"], s["score"]) == (0.5, 0.5, 0.5)
    # UNKNOWN ground truth is left out: only the first two rows count.
    assert feature_score([1, 0, UNKNOWN, UNKNOWN], [1, 0, 1, 1])["score"] == 1.0
    y_true = np.array([[1, 0, 0, 1], [0, 0, 1, 1]])
    y_pred = np.array([[1, 0, 0, 1], [1, 0, 0, 1]])
    s = fea_score(y_true, y_pred)
    # boundary: acc .5, F1 2/3; calcification: acc 1, F1 0 (no positive); direction: acc .5, F1 0; shape: 1, 1
    expected = [0.6 * .5 + 0.4 * 2 / 3, 0.6, 0.3, 1.0]
    assert [s["features"][f]["score"] for f in s["features"]] == pytest.approx(expected)
    assert s["score"] == pytest.approx(np.mean(expected))
    assert overall_score(0.7, 0.5) == pytest.approx(0.6)


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_score_folder_reports_missing_extra_and_malformed(tmp_path):
    write(tmp_path / "gt/cla_gt.csv", "id,label\n1,0\n2,1\n3,2\n4,2\n")
    write(tmp_path / "pred/cla_pre.csv", "id,label\n1,0\n2,1\n3,9\n5,1\n2,0\n")
    report = score_folder(tmp_path / "pred", tmp_path / "gt")
    problems = "\n".join(report["cla"]["problems"])
    assert "label='9' is not one of [0, 1, 2, 3, 4, 5]" in problems
    assert "1 id(s) of the ground truth have no prediction (counted wrong): [4]" in problems
    assert "1 predicted id(s) are not in the ground truth (ignored): [5]" in problems
    assert "id 2 appears more than once" in problems
    assert report["cla"]["scores"]["accuracy"] == 0.5


def test_score_by_img_name_through_order_file(tmp_path, capsys):
    write(tmp_path / "gt/fea_gt.csv", "id,boundary,calcification,direction,shape\n1,1,0,0,1\n2,0,0,1,1\n")
    write(tmp_path / "gt/fea_order.csv", "id,image_name,source\n1,0001.png,a\n2,0002.jpg,b\n")
    write(tmp_path / "pred/fea_pre.csv", "img_name,boundary,calcification,direction,shape\n0002.jpg,1,0,0,1\n0001.png,1,0,0,1\n")
    write(tmp_path / "gt/cla_gt.csv", "id,label\n1,3\n2,4\n")
    write(tmp_path / "pred/cla_pre.csv", "id,label\n1,3\n2,4\n")
    assert score_main([str(tmp_path / "pred"), str(tmp_path / "gt"), "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    fea = np.mean([0.6 * .5 + 0.4 * 2 / 3, 0.6, 0.3, 1.0])
    assert f"fea      {fea:.4f}" in out and "cla      1.0000" in out
    assert f"overall  {0.5 + 0.5 * fea:.4f}" in out
    assert (tmp_path / "r.json").is_file()


def test_score_rejects_a_wrong_header(tmp_path, capsys):
    write(tmp_path / "gt/cla_gt.csv", "id,label\n1,0\n")
    write(tmp_path / "pred/cla_pre.csv", "name,cls\n1,0\n")
    assert score_main([str(tmp_path / "pred"), str(tmp_path / "gt")]) == 2
    assert "cla_pre.csv: header ['name', 'cls'] should be id or img_name,label" in capsys.readouterr().err
