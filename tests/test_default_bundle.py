"""The committed default bundle (model/weights): intact, attributed, and pinned end to end on the dev testA."""
import hashlib

import pytest

import run
from model.bundle import WEIGHTS_DIR, find_bundles
from model.manifest import verify_bundle
from model.score import score_folder, tasks_from
from tests.helpers import SHARED_DATA

pytestmark = pytest.mark.skipif(not (WEIGHTS_DIR / "cla" / "manifest.json").is_file(),
                                reason="no default bundle in model/weights")

# run.py on the labelled dev testA with the shipped bundle; deterministic, so any change to the bundle or to
# the prediction path shows here. Update these when the bundle is retrained on purpose.
PINNED_CSVS = {"cla_pre.csv": "21ac9dd1e8a8dab60610611305f78e106efbdee460bd54dca26e21b9cc2c6670",
               "fea_pre.csv": "37def51b7b1a383ef95acb7ffeeef36a4e420b21e1d76af785355772d952089c"}
PINNED_SCORES = {"cla": 0.33106, "fea": 0.72626, "overall": 0.52866}


def test_default_bundle_is_intact_small_and_attributed():
    folders, problems = find_bundles(WEIGHTS_DIR)
    assert problems == [] and [f.name for f in folders] == ["cla", "fea"]
    total = 0
    for folder in folders:
        manifest, _ = verify_bundle(folder)
        assert manifest["trained_on"]["dataset"] == "breast-lesions-usg"
        assert "CC BY 4.0" in manifest["trained_on"]["license"]
        total += sum((folder / f["file"]).stat().st_size for f in manifest["folds"])
    assert total <= 40 * 1024 * 1024


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "testA").is_dir(), reason="../shared/data/breast-lesions-usg/testA is absent")
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_default_bundle_gives_the_pinned_csvs_and_score_on_testA(tmp_path, backend):
    assert run.main(["--test-dir", str(SHARED_DATA / "testA"), "--out-dir", str(tmp_path), "--quiet",
                     "--device", "cpu", "--backend", backend]) == 0
    for name, digest in PINNED_CSVS.items():
        assert hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() == digest, name
    report = score_folder(tmp_path, SHARED_DATA / "testA", tasks_from(None, []))
    assert report["cla"]["problems"] == [] and report["fea"]["problems"] == []
    assert report["cla"]["scores"]["n"] == 38 and report["fea"]["scores"]["n"] == 38
    scores = {"cla": report["cla"]["scores"]["score"], "fea": report["fea"]["scores"]["score"],
              "overall": report["overall"]}
    assert scores == pytest.approx(PINNED_SCORES, abs=5e-5)
