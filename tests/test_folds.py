import numpy as np
import pytest

from model.readers import Sample, read_dataset
from model.training.folds import (FoldsMismatchError, content_hash, group_ids, grouped_multilabel_split,
                                  load_or_make_folds, make_folds)
from tests.helpers import CLA_TASK, FEA_TASK, generic_task, make_cla_data, save_image


def samples_of(labels, groups=None):
    groups = groups if groups is not None else [None] * len(labels)
    return [Sample(path=None, key=f"k{i}", labels=tuple(np.atleast_1d(lab)), group=g)
            for i, (lab, g) in enumerate(zip(labels, groups))]


def test_folds_file_is_stable_and_notices_changed_data(tmp_path):
    data = make_cla_data(tmp_path / "d", per_class=5)
    _, result = read_dataset(CLA_TASK, data)
    samples = result.samples
    hashes = [content_hash(s.path) for s in samples]
    first = load_or_make_folds(CLA_TASK, samples, hashes, "d", 5, seed=1, folds_dir=tmp_path / "folds")
    again = load_or_make_folds(CLA_TASK, samples, hashes, "d", 5, seed=999, folds_dir=tmp_path / "folds")
    np.testing.assert_array_equal(first, again)                     # read back, not re-split
    for label in range(6):                                          # stratified: each class once per fold
        assert sorted(first[[s.labels[0] == label for s in samples]]) == [0, 1, 2, 3, 4]
    with pytest.raises(FoldsMismatchError, match="made for 5 folds, not 4"):
        load_or_make_folds(CLA_TASK, samples, hashes, "d", 4, seed=1, folds_dir=tmp_path / "folds")
    save_image(samples[3].path, np.zeros((40, 40, 3), np.uint8))
    changed = [content_hash(s.path) for s in samples]
    with pytest.raises(FoldsMismatchError, match=r"no longer matches its folds file; changed: 1 \(.*img003"):
        load_or_make_folds(CLA_TASK, samples, changed, "d", 5, seed=1, folds_dir=tmp_path / "folds")


def test_the_split_follows_its_seed():
    samples = samples_of(np.repeat(np.arange(3), 10))
    hashes = [str(i) for i in range(30)]
    a = make_folds(CLA_TASK, samples, hashes, 5, seed=0)
    assert (make_folds(CLA_TASK, samples, hashes, 5, seed=0) == a).all()
    assert (make_folds(CLA_TASK, samples, hashes, 5, seed=1) != a).any()


def test_too_few_images_of_a_class_for_the_folds_is_refused():
    samples = samples_of([0] * 10 + [1] * 3)
    with pytest.raises(ValueError, match=r"a class has fewer than 5 images \(counts per class: \[10, 3\]\)"):
        make_folds(CLA_TASK, samples, [str(i) for i in range(13)], 5, seed=0)


def test_no_group_is_split_across_folds_and_classes_stay_balanced():
    rng = np.random.default_rng(0)
    groups = [f"P{g}" for g in rng.integers(0, 40, 200)]
    labels = [int(g[1:]) % 2 for g in groups]                       # a patient's images share a class
    fold = make_folds(generic_task(), samples_of(labels, groups), [str(i) for i in range(200)], 5, seed=0)
    for g in set(groups):
        assert len({fold[i] for i in range(200) if groups[i] == g}) == 1
    positives = [np.mean([labels[i] for i in range(200) if fold[i] == k]) for k in range(5)]
    assert max(positives) - min(positives) < 0.35


def test_grouped_multilabel_split_keeps_groups_and_spreads_every_label():
    rng = np.random.default_rng(1)
    groups = rng.integers(0, 60, 300)
    targets = (rng.random((60, 3)) < [0.5, 0.2, 0.1])[groups].astype(int)
    fold = grouped_multilabel_split(targets, groups, 5, seed=0)
    for g in np.unique(groups):
        assert len(np.unique(fold[groups == g])) == 1
    for j in range(3):
        per_fold = [targets[fold == k, j].sum() for k in range(5)]
        assert max(per_fold) - min(per_fold) <= max(3, 0.35 * np.mean(per_fold)), (j, per_fold)
    with pytest.raises(ValueError, match="3 groups cannot make 5 folds"):
        grouped_multilabel_split(targets[:3], np.arange(3), 5, seed=0)
    fea_fold = make_folds(FEA_TASK, samples_of(np.c_[targets, targets[:, :1]], [str(g) for g in groups]),
                          [str(i) for i in range(300)], 5, seed=0)
    assert all(len(np.unique(fea_fold[groups == g])) == 1 for g in np.unique(groups))


def test_byte_identical_images_share_a_fold():
    samples = samples_of([0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1])
    hashes = [f"h{i}" for i in range(12)]
    hashes[7] = hashes[2]                                           # the same image under two labels
    groups = group_ids(samples, hashes)
    assert groups is not None and groups[7] == groups[2] and len(np.unique(groups)) == 11
    fold = make_folds(generic_task(), samples, hashes, 2, seed=0)
    assert fold[7] == fold[2]
    assert group_ids(samples, [f"h{i}" for i in range(12)]) is None  # nothing to group: plain stratified folds
