"""The segmentation readers (mask-pairs, image-mask-folders, csv) on tiny generated data, and on LGG."""
import collections
from pathlib import Path

import numpy as np
import pytest

from model.readers import read_dataset
from model.synthetic import fake_scan, save_image
from model.task import TaskFileError, task_from_dict

LGG = Path(__file__).resolve().parents[2] / "shared" / "data" / "lgg-mri"
# The patient: the case folder's first three name parts. Its third part is not always digits (TCGA_DU_A5TW),
# so "^(TCGA_[A-Z0-9]+_[0-9]+)" would refuse two LGG patients.
TCGA = "^(TCGA_[A-Z0-9]+_[A-Z0-9]+)"


def seg_task(classes=None, **data):
    return task_from_dict({"name": "seg", "kind": "segmentation", "classes": classes or {"lesion": 255},
                           "data": data}, "<test>")


def pair(image: Path, mask: Path, seed: int, lesion: bool = True, size=(32, 32)) -> np.ndarray:
    """A fake scan at ``image`` and its mask at ``mask``; returns the mask."""
    img, m = fake_scan(seed, size, lesion)
    save_image(image, img)
    save_image(mask, m)
    return m


def problems_of(task, data) -> tuple[list, list[str], list[Path]]:
    _, result = read_dataset(task, data)
    return result.samples, result.problems, result.unlabelled


def assert_one(problems: list[str], *parts: str) -> None:
    """Exactly one problem holds every one of ``parts``."""
    hits = [p for p in problems if all(part in p for part in parts)]
    assert len(hits) == 1, f"{parts} in:\n" + "\n".join(problems)


# --- mask-pairs ----------------------------------------------------------------------------------------

CASES = ("TCGA_CS_4941_19960909", "TCGA_DU_A5TW_19980228")


def make_pairs(root: Path) -> Path:
    """Two cases of three slices under root/kaggle_3m, .tif and .png mixed; slice 3 has no lesion."""
    for c, case in enumerate(CASES):
        for n in (1, 2, 3):
            ext = ".tif" if (c + n) % 2 else ".png"
            folder = root / "kaggle_3m" / case
            pair(folder / f"{case}_{n}{ext}", folder / f"{case}_{n}_mask{ext}", 10 * c + n, lesion=n != 3)
    (root / "kaggle_3m" / "data.csv").write_text("patient,grade\n")   # not an image: ignored
    (root / "kaggle_3m" / ".cache").mkdir()
    save_image(root / "kaggle_3m" / ".cache" / "x_mask.png", np.full((4, 4), 9, np.uint8))  # hidden: skipped
    return root


def test_mask_pairs_read_keys_presence_groups_and_masks(tmp_path):
    root = make_pairs(tmp_path / "lgg")
    task = seg_task(reader="mask-pairs", subfolder="kaggle_3m", group_pattern=TCGA)
    assert task.kind.name == "segmentation" and task.heads == ("lesion",) and task.mask_values == (255,)
    for data in (root, root / "kaggle_3m"):
        found_root, result = read_dataset(task, data)
        assert not result.problems and found_root == root.resolve()
        by_key = {s.key: s for s in result.samples}
        assert len(by_key) == 6
        s = by_key["kaggle_3m/TCGA_CS_4941_19960909/TCGA_CS_4941_19960909_1.tif"]
        assert s.labels == (1,) and s.boxes == () and s.group == "TCGA_CS_4941"
        assert s.mask == s.path.with_name("TCGA_CS_4941_19960909_1_mask.tif")
        assert by_key["kaggle_3m/TCGA_DU_A5TW_19980228/TCGA_DU_A5TW_19980228_3.png"].labels == (0,)
        assert collections.Counter(s.group for s in result.samples) == {"TCGA_CS_4941": 3, "TCGA_DU_A5TW": 3}
        assert collections.Counter(s.labels for s in result.samples) == {(1,): 4, (0,): 2}


def test_mask_pairs_without_group_pattern_and_other_suffix(tmp_path):
    folder = tmp_path / "d"
    pair(folder / "a.png", folder / "a-seg.png", 1)
    pair(folder / "sub" / "b.tif", folder / "sub" / "b-seg.png", 2)      # another extension: still its mask
    pair(folder / "c.png", folder / "c-seg.png", 3)
    save_image(folder / "c-seg.tif", np.zeros((32, 32), np.uint8))        # the .png one is preferred
    samples, problems, _ = problems_of(seg_task(reader="mask-pairs", mask_suffix="-seg"), folder)
    assert not problems
    assert [(s.key, s.mask.name, s.group) for s in samples] == [
        ("a.png", "a-seg.png", None), ("c.png", "c-seg.png", None), ("sub/b.tif", "b-seg.png", None)]


def test_mask_pairs_report_every_problem_at_once(tmp_path):
    root = make_pairs(tmp_path / "lgg")
    case = root / "kaggle_3m" / CASES[0]
    other = root / "kaggle_3m" / CASES[1]
    (case / f"{CASES[0]}_1_mask.tif").unlink()                                          # missing mask
    save_image(case / f"{CASES[0]}_9_mask.png", np.zeros((32, 32), np.uint8))          # orphan mask
    save_image(case / f"{CASES[0]}_2_mask.png", np.zeros((40, 32), np.uint8))          # size mismatch
    save_image(other / f"{CASES[1]}_1_mask.png", np.full((32, 32), 7, np.uint8))       # unknown value
    (other / f"{CASES[1]}_2_mask.tif").write_bytes(b"not a mask")                      # unreadable mask
    (other / f"{CASES[1]}_3.png").write_bytes(b"not an image")                         # unreadable image
    task = seg_task(reader="mask-pairs", subfolder="kaggle_3m", group_pattern=TCGA)
    samples, problems, unlabelled = problems_of(task, root)
    assert len(problems) == 6, "\n".join(problems)
    assert_one(problems, f"{case / CASES[0]}_1.tif: mask missing: expected {case / CASES[0]}_1_mask.tif")
    assert_one(problems, f"{case / CASES[0]}_9_mask.png: mask without its image")
    assert_one(problems, f"{case / CASES[0]}_2.png: the image is 32x32 but its mask", "_2_mask.png is 32x40")
    assert_one(problems, f"{other / CASES[1]}_1_mask.png: mask value(s) 7 are neither 0")
    assert_one(problems, f"{other / CASES[1]}_2_mask.tif: cannot read this mask")
    assert_one(problems, f"{other / CASES[1]}_3.png: cannot read this image")
    assert sorted(s.path.name for s in samples) == [f"{CASES[0]}_3.tif"]
    # Refused but readable images are decoded later, so a broken image is reported beside a broken mask;
    # the unreadable one is reported already.
    assert sorted(p.name for p in unlabelled) == sorted([f"{CASES[0]}_1.tif", f"{CASES[0]}_2.png",
                                                         f"{CASES[1]}_1.png", f"{CASES[1]}_2.tif"])


@pytest.mark.parametrize("reader", ["mask-pairs", "image-mask-folders"])
def test_a_group_pattern_that_misses_fails_on_the_names_before_any_image_is_decoded(tmp_path, monkeypatch, reader):
    import model.readers.base as base
    if reader == "mask-pairs":
        root = make_pairs(tmp_path / "lgg")
        for n in range(1, 9):
            pair(root / "kaggle_3m" / "misc" / f"scan_{n}.png", root / "kaggle_3m" / "misc" / f"scan_{n}_mask.png", n)
        task, seen = seg_task(reader="mask-pairs", subfolder="kaggle_3m", group_pattern=TCGA), "'misc/scan_1.png'"
    else:
        root = make_folders(tmp_path / "folders")
        task, seen = seg_task(reader="image-mask-folders", group_pattern="^patient(\\d+)"), ".png'"
    import model.readers.image_mask_folders as folders
    import model.readers.mask_pairs as pairs
    for module in (pairs, folders):
        monkeypatch.setattr(module, "segmentation_sample", lambda *a, **k: pytest.fail("an image was decoded"))
    samples, problems, _ = problems_of(task, root)
    assert len(problems) == 1 and not samples, problems
    assert "group_pattern" in problems[0] and "image names" in problems[0] and seen in problems[0]
    import re
    assert len(re.findall(r"'[^']*\.(?:png|jpg|tif)'", problems[0])) <= base.EXAMPLES   # a handful, not all
    if reader == "mask-pairs":
        assert "finds no group in 8 of 14" in problems[0] and "and 3 more" in problems[0]
        assert "relative to the layout folder, the subfolder: option not included" in problems[0]


def test_mask_pairs_follow_linked_patient_folders_and_skip_a_loop(tmp_path, caplog):
    source = make_pairs(tmp_path / "source") / "kaggle_3m"
    subset = tmp_path / "subset" / "kaggle_3m"
    subset.mkdir(parents=True)
    for case in CASES:
        (subset / case).symlink_to(source / case, target_is_directory=True)
    (source / CASES[0] / "back").symlink_to(source / CASES[0], target_is_directory=True)   # a loop
    (source / CASES[1] / "gone_1.png").symlink_to(tmp_path / "nowhere.png")               # a broken link
    task = seg_task(reader="mask-pairs", subfolder="kaggle_3m", group_pattern=TCGA)
    samples, problems, _ = problems_of(task, tmp_path / "subset")
    assert problems == [] and len(samples) == 6
    assert sorted({s.group for s in samples}) == sorted(c[:12] for c in CASES)
    assert "a link to a folder already read" in caplog.text and "a broken link" in caplog.text


def test_mask_pairs_finds_its_layout_only_with_masks(tmp_path):
    save_image(tmp_path / "d" / "a.png", fake_scan(1, (32, 32))[0])
    with pytest.raises(FileNotFoundError, match="no seg training data here. Expected images with their masks "
                                                r"beside them \(<stem>.tif and <stem>-m.tif\)"):
        read_dataset(seg_task(reader="mask-pairs", mask_suffix="-m"), tmp_path / "d")


# --- image-mask-folders ----------------------------------------------------------------------------------

def make_folders(root: Path) -> Path:
    """Patients P01 (3 images) and P02 (2): jpg, png and tif images with png masks."""
    for i, (name, ext) in enumerate([("P01_a", ".jpg"), ("P01_b", ".png"), ("P01_c", ".tif"),
                                     ("P02_a", ".png"), ("P02_b", ".jpg")]):
        pair(root / "images" / f"{name}{ext}", root / "masks" / f"{name}.png", 30 + i, lesion=i != 1,
             size=(32, 48))
    return root


def test_image_mask_folders_read(tmp_path):
    root = make_folders(tmp_path / "bus")
    task = seg_task(reader="image-mask-folders", group_pattern=r"^(P\d+)_")
    samples, problems, _ = problems_of(task, root)
    assert not problems
    assert [(s.key, s.labels, s.group, s.mask.name) for s in samples] == [
        ("images/P01_a.jpg", (1,), "P01", "P01_a.png"), ("images/P01_b.png", (0,), "P01", "P01_b.png"),
        ("images/P01_c.tif", (1,), "P01", "P01_c.png"), ("images/P02_a.png", (1,), "P02", "P02_a.png"),
        ("images/P02_b.jpg", (1,), "P02", "P02_b.png")]
    assert samples[0].mask == root.resolve() / "masks" / "P01_a.png"
    # Without group_pattern each image is its own group; the whole match when the pattern has no group.
    assert {s.group for s in problems_of(seg_task(reader="image-mask-folders"), root)[0]} == {None}
    whole = problems_of(seg_task(reader="image-mask-folders", group_pattern=r"P\d+"), root)[0]
    assert [s.group for s in whole] == ["P01", "P01", "P01", "P02", "P02"]


def test_image_mask_folders_presence_of_each_class(tmp_path):
    root = tmp_path / "d"
    for i, values in enumerate([(255, 128), (255,), (), (128,)]):
        img, _ = fake_scan(i, (32, 32), lesion=False)
        mask = np.zeros((32, 32), np.uint8)
        for j, value in enumerate(values):
            mask[4 + 10 * j:10 + 10 * j, 4:10] = value
        save_image(root / "scans" / f"s{i}.png", img)
        save_image(root / "labels" / f"s{i}.tif", mask)
    task = seg_task({"tumour": 255, "edema": 128}, reader="image-mask-folders", images="scans", masks="labels")
    samples, problems, _ = problems_of(task, root)
    assert not problems and task.mask_values == (255, 128)
    assert [s.labels for s in samples] == [(1, 1), (1, 0), (0, 0), (0, 1)]


def test_image_mask_folders_report_every_problem_at_once(tmp_path):
    root = make_folders(tmp_path / "bus")
    images, masks = root / "images", root / "masks"
    (masks / "P01_a.png").unlink()                                                    # missing mask
    save_image(masks / "P09_z.png", np.zeros((32, 48), np.uint8))                     # orphan mask
    save_image(images / "P01_b.jpg", fake_scan(1, (32, 48))[0])                       # two images, one stem
    save_image(masks / "P01_c.png", np.zeros((48, 32), np.uint8))                     # size mismatch
    save_image(masks / "P02_a.png", np.full((32, 48), 7, np.uint8))                   # unknown value
    (masks / "P02_b.png").write_bytes(b"\x89PNG broken")                              # unreadable mask
    samples, problems, unlabelled = problems_of(seg_task(reader="image-mask-folders", group_pattern=r"^(P\d+)_"),
                                                root)
    assert len(problems) == 6, "\n".join(problems)
    assert_one(problems, f"{images / 'P01_a.jpg'}: mask missing: expected {masks / 'P01_a'}.<ext>")
    assert_one(problems, f"{masks / 'P09_z.png'}: mask without its image in {images}")
    assert_one(problems, f"{images / 'P01_b.png'}: same name as P01_b.jpg")
    assert_one(problems, f"{images / 'P01_c.tif'}: the image is 48x32 but its mask", "P01_c.png is 32x48")
    assert_one(problems, f"{masks / 'P02_a.png'}: mask value(s) 7 are neither 0")
    assert_one(problems, f"{masks / 'P02_b.png'}: cannot read this mask")
    assert [s.key for s in samples] == ["images/P01_b.jpg"]


# --- csv -----------------------------------------------------------------------------------------------

def make_csv(root: Path, rows: list[str]) -> Path:
    for i, ext in enumerate([".png", ".tif", ".png", ".tif"]):
        pair(root / "scans" / f"s{i}{ext}", root / "masks" / f"s{i}_m.png", 50 + i, lesion=i != 2)
    (root / "train.csv").write_text("\n".join(["image,mask,patient,label", *rows]) + "\n")
    return root


GOOD_ROWS = ["scans/s0.png,masks/s0_m.png,A,x", "scans/s1.tif,masks/s1_m.png,A,", "scans/s2.png,masks/s2_m.png,B,",
             "scans/s3.tif,masks/s3_m.png,B,"]


def test_csv_reads_masks_and_ignores_labels(tmp_path):
    root = make_csv(tmp_path / "d", GOOD_ROWS)
    samples, problems, _ = problems_of(seg_task(reader="csv", group_column="patient"), root)
    assert not problems
    assert [(s.key, s.labels, s.group, s.mask.name) for s in samples] == [
        ("scans/s0.png", (1,), "A", "s0_m.png"), ("scans/s1.tif", (1,), "A", "s1_m.png"),
        ("scans/s2.png", (0,), "B", "s2_m.png"), ("scans/s3.tif", (1,), "B", "s3_m.png")]
    assert samples[0].mask == root.resolve() / "masks" / "s0_m.png"


def test_csv_mask_column_and_image_root(tmp_path):
    root = tmp_path / "d"
    pair(root / "data" / "scans" / "a.png", root / "data" / "gt" / "a.png", 1)
    (root / "train.csv").write_text("path,seg\nscans/a.png,gt/a.png\n")
    task = seg_task(reader="csv", image_column="path", mask_column="seg", image_root="data")
    samples, problems, _ = problems_of(task, root)
    assert not problems and [(s.key, s.group) for s in samples] == [("data/scans/a.png", None)]
    _, problems, _ = problems_of(seg_task(reader="csv", image_column="path"), root)
    assert problems == [f"{root.resolve() / 'train.csv'}: no column(s) ['mask']; its header is ['path', 'seg']"]


def test_csv_reports_every_mask_problem_at_once(tmp_path):
    root = make_csv(tmp_path / "d", [])
    save_image(root / "masks" / "s1_m.png", np.full((32, 32), 7, np.uint8))
    save_image(root / "masks" / "big.png", np.zeros((64, 32), np.uint8))
    (root / "masks" / "bad.png").write_bytes(b"nothing")
    (root / "train.csv").write_text("\n".join([
        "image,mask,patient",
        "scans/s0.png,masks/none.png,A",      # 2: missing mask file
        "scans/s1.tif,masks/s1_m.png,A",      # 3: unknown value
        "scans/s2.png,,B",                    # 4: empty mask cell
        "scans/s3.tif,masks/big.png,B",       # 5: size mismatch
        "scans/s0.png,masks/bad.png,",        # 6: duplicate image, unreadable mask, empty group
        "scans/s3.tif,masks/s3_m.png,B",      # 7: duplicate image only
    ]) + "\n")
    samples, problems, unlabelled = problems_of(seg_task(reader="csv", group_column="patient"), root)
    csv_file = root.resolve() / "train.csv"
    assert len(problems) == 8, "\n".join(problems)
    assert_one(problems, f"{csv_file}:2: mask 'masks/none.png' not found")
    assert_one(problems, f"{csv_file}:3: {root.resolve() / 'masks/s1_m.png'}: mask value(s) 7 are neither 0")
    assert_one(problems, f"{csv_file}:4: empty mask")
    assert_one(problems, f"{csv_file}:5: {root.resolve() / 'scans/s3.tif'}: the image is 32x32 but its mask",
               "big.png is 32x64")
    assert_one(problems, f"{csv_file}:6: image 'scans/s0.png' is already on line 2")
    assert_one(problems, f"{csv_file}:6: {root.resolve() / 'masks/bad.png'}: cannot read this mask")
    assert_one(problems, f"{csv_file}:6: empty patient")
    assert_one(problems, f"{csv_file}:7: image 'scans/s3.tif' is already on line 5")
    assert samples == [] and sorted(p.name for p in unlabelled) == ["s0.png", "s1.tif", "s2.png", "s3.tif"]


# --- options -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("data, message", [
    ({"reader": "mask-pairs", "group_pattern": "(TCGA"}, "group_pattern '(TCGA' is not a valid regular expression"),
    ({"reader": "image-mask-folders", "group_pattern": 3}, "group_pattern: expected a regular expression"),
    ({"reader": "mask-pairs", "mask_suffix": ""}, "mask_suffix: must not be empty"),
    ({"reader": "image-mask-folders", "images": "x", "masks": "x"}, "expected two different folder names"),
    ({"reader": "mask-pairs", "masks": "x"}, "reader mask-pairs: unknown key"),
    ({"reader": "csv", "mask_column": 1}, "mask_column: expected a str"),
])
def test_bad_options_are_task_file_errors(data, message):
    with pytest.raises(TaskFileError, match=message.replace("(", r"\(")):
        seg_task(**data)


def test_segmentation_readers_refuse_classification_tasks():
    with pytest.raises(TaskFileError, match="reader mask-pairs reads detection or segmentation tasks, not single-label"):
        task_from_dict({"name": "c", "kind": "single-label", "classes": ["a", "b"], "data": {"reader": "mask-pairs"}},
                       "<test>")


# --- the real LGG data ---------------------------------------------------------------------------------

@pytest.mark.skipif(not (LGG / "kaggle_3m").is_dir(), reason=f"LGG MRI data not found at {LGG}")
def test_lgg_mri():
    task = seg_task({"tumour": 255}, reader="mask-pairs", subfolder="kaggle_3m", group_pattern=TCGA)
    root, result = read_dataset(task, LGG)
    assert not result.problems, "\n".join(result.problems[:20])
    assert len(result.samples) == 781 and root == LGG.resolve()
    assert len({s.group for s in result.samples}) == 24
    assert all(s.mask.name == s.path.stem + "_mask.tif" for s in result.samples)
    assert 0 < sum(s.labels[0] for s in result.samples) < 781
