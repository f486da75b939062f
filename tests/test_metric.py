import json
import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

from model.cli import guarded
from model.metric import UNKNOWN, binary_auc, label_scores, multi_label_scores, overall_score, single_label_scores
from model.score import main as score_main
from model.score import score_folder
from tests.helpers import CLA_TASK, FEA_TASK, FEATURES, generic_task

BOTH = [CLA_TASK, FEA_TASK]


def test_competition_score_by_hand():
    s = single_label_scores([0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0])
    # F1: class 0 = 2*1/(2+2) = .5, class 1 = 2*2/(2+3) = .8, class 2 = 2*1/(2+1) = 2/3
    assert s["accuracy"] == pytest.approx(4 / 6)
    assert s["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert s["score"] == pytest.approx(0.6 * 4 / 6 + 0.4 * (0.5 + 0.8 + 2 / 3) / 3)


def test_single_label_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    for _ in range(50):
        t, p = rng.integers(0, 6, 40), rng.integers(0, 6, 40)
        s = single_label_scores(t, p)
        assert s["macro_f1"] == pytest.approx(f1_score(t, p, average="macro", zero_division=0))
        assert s["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(t, p))


def test_macro_f1_counts_a_class_that_is_only_predicted():
    # Class 2 never occurs but is predicted once: it joins the average with F1 0 (sklearn's union).
    s = single_label_scores([0, 0, 1, 1], [0, 0, 1, 2])
    assert s["macro_f1"] == pytest.approx((1.0 + 2 / 3 + 0.0) / 3)


def test_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(1)
    for _ in range(20):
        y = rng.integers(0, 2, 60)
        scores = np.round(rng.random(60), 1)  # many ties
        assert binary_auc(y, scores) == pytest.approx(roc_auc_score(y, scores))
    probs = rng.dirichlet(np.ones(3), 90)
    y = rng.integers(0, 3, 90)
    assert single_label_scores(y, probs.argmax(1), probs, "auc")["score"] == pytest.approx(
        roc_auc_score(y, probs, multi_class="ovr", average="macro"))


def test_missing_prediction_is_wrong_but_no_class():
    # -1 (no prediction) lowers accuracy and recall, but is not averaged in as a class of its own.
    s = single_label_scores([0, 1], [0, -1])
    assert s["accuracy"] == 0.5 and s["macro_f1"] == pytest.approx((1.0 + 0.0) / 2)


def test_multi_label_score_by_hand():
    s = label_scores([1, 0, 1, 0], [1, 1, 0, 0])
    assert (s["accuracy"], s["f1"], s["competition"]) == (0.5, 0.5, 0.5)
    # UNKNOWN ground truth is left out: only the first two rows count.
    assert label_scores([1, 0, UNKNOWN, UNKNOWN], [1, 0, 1, 1])["competition"] == 1.0
    y_true = np.array([[1, 0, 0, 1], [0, 0, 1, 1]])
    y_pred = np.array([[1, 0, 0, 1], [1, 0, 0, 1]])
    s = multi_label_scores(y_true, y_pred, FEATURES)
    # boundary: acc .5, F1 2/3; calcification: acc 1, F1 0 (no positive); direction: acc .5, F1 0; shape: 1, 1
    expected = [0.6 * .5 + 0.4 * 2 / 3, 0.6, 0.3, 1.0]
    assert [s["labels"][f]["score"] for f in FEATURES] == pytest.approx(expected)
    assert s["score"] == pytest.approx(np.mean(expected))
    assert overall_score([0.7, 0.5]) == pytest.approx(0.6)
    assert multi_label_scores(y_true, y_pred, FEATURES, metric="accuracy")["score"] == pytest.approx(0.75)


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_score_folder_reports_missing_extra_and_malformed(tmp_path):
    write(tmp_path / "gt/cla_gt.csv", "id,label\n1,0\n2,1\n3,2\n4,2\n")
    write(tmp_path / "pred/cla_pre.csv", "id,label\n1,0\n2,1\n3,9\n5,1\n2,0\n")
    report = score_folder(tmp_path / "pred", tmp_path / "gt", BOTH)
    problems = "\n".join(report["cla"]["problems"])
    assert "label='9' is not one of ['0', '1', '2', '3', '4', '5']" in problems
    assert "1 id(s) of the ground truth have no prediction (counted wrong): [4]" in problems
    assert "1 predicted id(s) are not in the ground truth (ignored): [5]" in problems
    assert "id 2 appears more than once" in problems
    assert report["cla"]["scores"]["accuracy"] == 0.5 and "fea" not in report and "overall" not in report


def test_score_by_img_name_through_order_file(tmp_path, capsys):
    write(tmp_path / "gt/fea_gt.csv", "id,boundary,calcification,direction,shape\n1,1,0,0,1\n2,0,0,1,1\n")
    write(tmp_path / "gt/fea_order.csv", "id,image_name,source\n1,0001.png,a\n2,0002.jpg,b\n")
    write(tmp_path / "pred/fea_pre.csv", "img_name,boundary,calcification,direction,shape\n0002.jpg,1,0,0,1\n0001.png,1,0,0,1\n")
    write(tmp_path / "gt/cla_gt.csv", "id,label\n1,3\n2,4\n")
    write(tmp_path / "pred/cla_pre.csv", "id,label\n1,3\n2,4\n")
    args = [str(tmp_path / "pred"), str(tmp_path / "gt"), "--json", str(tmp_path / "r.json"),
            "--task", "tasks/birads-cla.yaml", "--task", "tasks/birads-fea.yaml"]
    assert score_main(args) == 0
    out = capsys.readouterr().out
    fea = np.mean([0.6 * .5 + 0.4 * 2 / 3, 0.6, 0.3, 1.0])
    assert f"fea      {fea:.4f}" in out and "cla      1.0000" in out
    assert f"overall  {0.5 + 0.5 * fea:.4f}" in out
    assert '"overall"' in (tmp_path / "r.json").read_text()


def test_score_rejects_a_wrong_header_and_a_missing_folder(tmp_path, capsys):
    write(tmp_path / "gt/cla_gt.csv", "id,label\n1,0\n")
    write(tmp_path / "pred/cla_pre.csv", "name,cls\n1,0\n")
    tasks = ["--task", "tasks/birads-cla.yaml"]
    assert guarded(score_main, [str(tmp_path / "pred"), str(tmp_path / "gt"), *tasks]) == 2
    assert "cla_pre.csv: header ['name', 'cls'] should start with id or img_name" in capsys.readouterr().err
    assert guarded(score_main, [str(tmp_path / "nowhere"), str(tmp_path / "gt"), *tasks]) == 2
    assert "nowhere: prediction folder not found" in capsys.readouterr().err
    (tmp_path / "pred/cla_pre.csv").unlink()
    assert guarded(score_main, [str(tmp_path / "pred"), str(tmp_path / "gt"), *tasks]) == 1
    assert "missing, task scored 0" in capsys.readouterr().out


def test_a_task_that_cannot_be_scored_costs_the_other_task_nothing(tmp_path, capsys):
    write(tmp_path / "gt/cla_gt.csv", "id,label\n1,0\n")
    write(tmp_path / "pred/cla_pre.csv", "name,cls\n1,0\n")
    write(tmp_path / "gt/fea_gt.csv", "id,boundary,calcification,direction,shape\n1,1,0,0,1\n")
    write(tmp_path / "pred/fea_pre.csv", "id,boundary,calcification,direction,shape\n1,1,0,0,1\n")
    args = [str(tmp_path / "pred"), str(tmp_path / "gt"), "--json", str(tmp_path / "r.json"),
            "--task", "tasks/birads-cla.yaml", "--task", "tasks/birads-fea.yaml"]
    assert guarded(score_main, args) == 2
    out = capsys.readouterr().out
    assert "fea      0.8000" in out and "overall" not in out
    assert "! cla: not scored: " in out and "cla_pre.csv: header ['name', 'cls'] should start with id" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["fea"]["scores"]["score"] == pytest.approx(0.8) and "header" in report["cla"]["error"] and "overall" not in report


def test_a_probability_csv_is_scored_by_auc(tmp_path):
    task = generic_task("tumour", heads=("benign", "malignant"), metric="auc", output={"values": "probabilities"})
    write(tmp_path / "gt/tumour_gt.csv", "id,label\n1,0\n2,1\n3,1\n4,0\n")
    write(tmp_path / "pred/tumour_pre.csv", "id,benign,malignant\n1,0.9,0.1\n2,0.2,0.8\n3,0.6,0.4\n4,0.7,0.3\n")
    report = score_folder(tmp_path / "pred", tmp_path / "gt", [task])
    assert report["tumour"]["scores"]["score"] == pytest.approx(roc_auc_score([0, 1, 1, 0], [0.1, 0.8, 0.4, 0.3]))


@pytest.mark.parametrize("positive", ["malignant", "benign"])
def test_a_binary_tasks_details_rank_by_the_positive_class_probability(positive):
    # The AUC and the rates belong to the task's positive class, whichever column it is: scored on the
    # other column, this AUC would be 0.0 rather than 1.0.
    task = generic_task(positive=positive)
    p = task.positive_index
    labels = np.array([0, 0, 1, 1, 0, 1])
    p_positive = np.where(labels == p, [0.9, 0.8, 0.7, 0.95, 0.6, 0.65], [0.1, 0.3, 0.2, 0.4, 0.35, 0.05])
    probs = np.zeros((6, 2))
    probs[:, p], probs[:, 1 - p] = p_positive, 1 - p_positive
    predicted = np.argmax(probs, axis=1)
    binary = task.kind.details(task, labels, predicted, probs)["binary"]
    assert binary["positive"] == positive and binary["auc"] == 1.0
    assert binary["sensitivity"] == 1.0 and binary["specificity"] == 1.0
