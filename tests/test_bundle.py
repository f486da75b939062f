import json
import shutil

import numpy as np
import pytest
import torch

from model.atomic import public_mode
from model.bundle import load_bundle
from model.checkpoint import load_checkpoint
from model.ensemble import make_tta
from model.errors import BundleError
from model.manifest import read_manifest, sha256
from model.network import OFFLINE_IMAGENET, create_network, offline_imagenet_state
from tests.helpers import TEST_BACKBONE, TEST_SIZE, make_bundle


def test_forward_pass_on_a_small_batch():
    net = create_network(TEST_BACKBONE, 6)
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 6)


@pytest.mark.parametrize("backbone", sorted(OFFLINE_IMAGENET))
def test_offline_imagenet_weights_give_real_imagenet_predictions(backbone):
    """The packages' tensors map in order onto timm's layout: a photo of a temple is recognised as a building."""
    import cv2
    import timm
    from sklearn.datasets import load_sample_image
    from timm.data import ImageNetInfo

    net = create_network(backbone, 1000, pretrained="imagenet").eval()
    classifier = offline_imagenet_state(backbone)  # create_network leaves the ImageNet head out on purpose
    net.classifier.load_state_dict({"weight": classifier["_fc.weight"], "bias": classifier["_fc.bias"]})
    cfg = timm.get_pretrained_cfg(backbone)
    size = cfg.input_size[-1]
    image = cv2.resize(load_sample_image("china.jpg"), (size, size), interpolation=cv2.INTER_AREA) / 255.0
    x = torch.tensor(((image - cfg.mean) / np.array(cfg.std)).transpose(2, 0, 1), dtype=torch.float32)[None]
    with torch.no_grad():
        top = net(x).softmax(-1)[0].topk(3)
    names = [ImageNetInfo().index_to_description(int(i)) for i in top.indices]
    buildings = ("palace", "monastery", "bell cote", "stupa", "castle", "boathouse", "church", "mosque", "dome")
    assert any(name.startswith(b) for name in names[:1] for b in buildings), names
    assert top.values[0] > 0.2


def test_bundle_round_trip_and_self_description(tmp_path):
    folder = make_bundle(tmp_path / "cla", "cla", folds=2)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["network"]["backbone"] == TEST_BACKBONE and manifest["network"]["input_size"] == TEST_SIZE
    assert manifest["task"]["classes"] == ["2", "3", "4A", "4B", "4C", "5"]
    assert manifest["task"]["output"]["file"] == "cla_pre.csv" and "img_size" not in json.dumps(manifest)
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
        looped = torch.stack([torch.stack([torch.sigmoid(net(bundle.ensemble.norm(t.augment_image(images))))
                                           for net in bundle.ensemble.nets]) for t in tta]).mean((0, 1))
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


def edit_manifest(folder, change):
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("change, message", [
    (lambda m: m["network"].update(input_size="big"), r"network.input_size 'big' is not a size in pixels"),
    (lambda m: m.update(decision={"logit_offsets": [0.0, 1.0]}), r"decision .* is not \{'logit_offsets': 6 numbers\}"),
    (lambda m: m.update(decision={"thresholds": [0.5] * 6}), r"decision .* is not \{'logit_offsets'"),
    (lambda m: m.update(folds=[]), r"folds is not a non-empty list"),
    (lambda m: m["network"].update(input_norm="scan"), r"network.input_norm 'scan' is not one of backbone, image"),
    (lambda m: m.pop("prior"), r"prior None is not 6 probabilities"),
    (lambda m: m["task"].pop("kind"), r"task: kind: required"),
    (lambda m: m["task"].update(test_folder="../../etc"), r"test_folder '../../etc' must be a folder inside"),
    (lambda m: m["folds"][0].update(file="../../outside.pt"), r"file entry '../../outside.pt' points outside"),
    (lambda m: m["folds"][0].update(file="/etc/passwd"), r"file entry '/etc/passwd' points outside"),
])
def test_a_manifest_of_the_wrong_shape_is_refused_with_its_reason(tmp_path, change, message):
    folder = make_bundle(tmp_path / "cla", "cla")
    edit_manifest(folder, change)
    with pytest.raises(BundleError, match=message):
        load_bundle(folder)


def test_a_manifest_that_is_a_list_or_not_utf8_is_refused(tmp_path):
    folder = make_bundle(tmp_path / "cla", "cla")
    (folder / "manifest.json").write_text("[1, 2]")
    with pytest.raises(BundleError, match="expected a JSON object, found list"):
        read_manifest(folder)
    (folder / "manifest.json").write_bytes(b'{"format": "\xff\xfe"}')
    with pytest.raises(BundleError, match="not valid UTF-8 JSON"):
        read_manifest(folder)


def test_a_symlink_out_of_the_bundle_is_refused(tmp_path):
    folder = make_bundle(tmp_path / "cla", "cla")
    outside = tmp_path / "outside.pt"
    shutil.move(folder / "fold0.pt", outside)
    (folder / "fold0.pt").symlink_to(outside)
    with pytest.raises(BundleError, match="points outside the bundle folder"):
        load_bundle(folder)


def test_a_v1_birads_manifest_still_loads_as_its_task_file(tmp_path):
    folder = make_bundle(tmp_path / "fea", "fea", rule={"thresholds": [0.4, 0.5, 0.6, 0.5]})
    new = json.loads((folder / "manifest.json").read_text())
    old = {"format": "birads-bundle/1", "task": "fea", "backbone": TEST_BACKBONE, "heads": new["task"]["labels"],
           "img_size": TEST_SIZE, "mean": [0.5] * 3, "std": [0.5] * 3, "decision": new["decision"],
           "prior": new["prior"], "cv": {}, "folds": new["folds"]}
    (folder / "manifest.json").write_text(json.dumps(old))
    bundle = load_bundle(folder)
    assert bundle.task.name == "fea" and bundle.task.output.file == "fea_pre.csv" and bundle.img_size == TEST_SIZE
    assert bundle.rule == {"thresholds": [0.4, 0.5, 0.6, 0.5]}
    old["task"] = "other"
    (folder / "manifest.json").write_text(json.dumps(old))
    with pytest.raises(BundleError, match="birads-bundle/1 manifest for task 'other'"):
        load_bundle(folder)


def test_a_v3_manifest_loads_as_backbone_normalised_and_a_v4_one_must_say(tmp_path):
    from tests.helpers import PROJECT
    shipped = read_manifest(PROJECT / "model" / "weights" / "cla")          # the shipped bundles are v3 files
    assert shipped["format"] == "harness-bundle/4" and shipped["upgraded_from"] == "harness-bundle/3"
    assert shipped["network"]["input_norm"] == "backbone"
    folder = make_bundle(tmp_path / "cla", "cla")
    assert read_manifest(folder)["format"] == "harness-bundle/4" and "upgraded_from" not in read_manifest(folder)
    edit_manifest(folder, lambda m: m["network"].pop("input_norm"))
    with pytest.raises(BundleError, match="network.input_norm None is not one of backbone, image"):
        load_bundle(folder)


def test_a_checkpoint_that_disagrees_with_its_manifest_is_refused(tmp_path):
    folder = make_bundle(tmp_path / "cla", "cla")
    edit_manifest(folder, lambda m: m["network"].update(input_size=64))
    with pytest.raises(BundleError, match="made for 32 px and 6 outputs, but the manifest says 64 px"):
        load_bundle(folder)


def test_checkpoints_are_written_as_harness_checkpoints_and_the_earlier_name_still_loads(tmp_path):
    folder = make_bundle(tmp_path / "cla", "cla")
    ckpt = torch.load(folder / "fold0.pt", weights_only=True)
    assert ckpt["format"] == "harness-checkpoint/1"
    torch.save({**ckpt, "format": "birads-checkpoint/1"}, tmp_path / "old.pt")  # a bundle or run from before
    assert load_checkpoint(tmp_path / "old.pt")["heads"] == ckpt["heads"]
    torch.save({**ckpt, "format": "other/1"}, tmp_path / "other.pt")
    with pytest.raises(BundleError, match="not a harness-checkpoint/1 checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


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


def test_bundle_export_refuses_to_replace_without_force_and_keeps_the_old_one(tmp_path):
    from model.export import export_bundle
    folder = make_bundle(tmp_path / "w/cla", "cla", seed=0)
    before = sha256(folder / "fold0.pt")
    ckpt = load_checkpoint(folder / "fold0.pt")
    manifest = {k: v for k, v in read_manifest(folder).items() if k in ("task", "decision", "prior")}
    with pytest.raises(BundleError, match="already holds a bundle; pass --force"):
        export_bundle(folder, [ckpt], manifest)
    export_bundle(folder, [ckpt], manifest, replace=True, backups=tmp_path / "backups")
    (backup,) = (tmp_path / "backups").iterdir()
    assert sha256(backup / "fold0.pt") == before and len(read_manifest(folder)["folds"]) == 1
    assert (folder.stat().st_mode & 0o777) == public_mode(directory=True)  # not mkdtemp's 0700
