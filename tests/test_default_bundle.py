"""The committed default bundle (model/weights): intact, attributed, and usable end to end."""
import pytest

import run
from model.bundle import WEIGHTS_DIR, verify_bundle
from model.score import score_folder
from tests.helpers import SHARED_DATA

pytestmark = pytest.mark.skipif(not (WEIGHTS_DIR / "cla" / "manifest.json").is_file(),
                                reason="no default bundle in model/weights")


def test_default_bundle_is_intact_small_and_attributed():
    total = 0
    for task in ("cla", "fea"):
        manifest = verify_bundle(WEIGHTS_DIR / task)
        assert manifest["trained_on"]["dataset"] == "breast-lesions-usg"
        assert "CC BY 4.0" in manifest["trained_on"]["license"]
        total += sum((WEIGHTS_DIR / task / f["file"]).stat().st_size for f in manifest["folds"])
    assert total <= 40 * 1024 * 1024


@pytest.mark.skipif(not (SHARED_DATA / "testA").is_dir(), reason="../shared/data/breast-lesions-usg/testA is absent")
def test_default_bundle_scores_the_labelled_testA(tmp_path):
    assert run.main(["--test-dir", str(SHARED_DATA / "testA"), "--out-dir", str(tmp_path), "--quiet"]) == 0
    report = score_folder(tmp_path, SHARED_DATA / "testA")
    assert report["cla"]["problems"] == [] and report["fea"]["problems"] == []
    assert report["cla"]["scores"]["n"] == 38 and report["fea"]["scores"]["n"] == 38
    assert 0 < report["overall"] <= 1
