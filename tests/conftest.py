import os
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# Keep the ONNX graph cache of the test run out of the user's ~/.cache.
os.environ.setdefault("HARNESS_CACHE_DIR", tempfile.mkdtemp(prefix="harness-test-cache-"))

import model.kinds  # noqa: E402,F401  (as the entry points do: register the task kinds)
from tests.helpers import make_weights  # noqa: E402


@pytest.fixture(scope="session")
def weights(tmp_path_factory):
    """A weights folder with tiny random-init cla and fea bundles (2 folds each)."""
    return make_weights(tmp_path_factory.mktemp("weights"))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: an end-to-end test that trains or predicts for real (deselect with "
                                       "-m 'not slow' for the quick path; CI runs every test)")
