"""Checkpoint loading: file kinds, URLs through the hub cache, foreign naming schemes, reports."""

from __future__ import annotations

import pickle
import re

import pytest
import torch
import torchvision

from backbones import (
    WeightsFileError,
    WeightsMismatchError,
    create_backbone,
    load_weights,
)
from tests.helpers import randomize_norms_


def _assert_same_tensors(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


@pytest.fixture(scope="module")
def resnet50_state() -> dict[str, torch.Tensor]:
    return randomize_norms_(create_backbone("resnet50")).state_dict()


# ----------------------------------------------------------------------- detectron2 naming (our inverse)
def _to_detectron2(key: str) -> str:
    """Independent re-statement of detectron2's ResNet names, written from its documentation."""
    key = re.sub(r"^conv1\.", "stem.conv1.", key)
    key = re.sub(r"^bn1\.", "stem.conv1.norm.", key)
    m = re.match(r"layer(\d)\.(\d+)\.(.*)", key)
    if not m:
        return key
    rest = m.group(3)
    rest = re.sub(r"^bn(\d)\.", r"conv\1.norm.", rest)
    rest = re.sub(r"^downsample\.0\.", "shortcut.", rest)
    rest = re.sub(r"^downsample\.1\.", "shortcut.norm.", rest)
    return f"res{int(m.group(1)) + 1}.{m.group(2)}.{rest}"


def test_detectron2_pkl_file(tmp_path, resnet50_state):
    blobs = {_to_detectron2(k): v.numpy() for k, v in resnet50_state.items() if "num_batches" not in k}
    assert "res2.0.shortcut.norm.running_mean" in blobs and "stem.conv1.norm.weight" in blobs
    path = tmp_path / "R-50.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": blobs, "__author__": "torchvision", "matching_heuristics": True}, f)
    model = create_backbone("resnet50")
    report = load_weights(model, path)
    assert report.format == "detectron2" and report.ok and not report.notes
    _assert_same_tensors(model, {k: v for k, v in resnet50_state.items() if "num_batches" not in k})


def test_detectron2_detector_checkpoint_drops_the_heads(resnet50_state):
    state = {f"backbone.bottom_up.{_to_detectron2(k)}": v for k, v in resnet50_state.items()}
    state["backbone.fpn_lateral2.weight"] = torch.zeros(256, 256, 1, 1)
    state["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(81, 1024)
    model = create_backbone("resnet50")
    report = load_weights(model, {"model": state, "__author__": "Detectron2 Model Zoo"})
    assert report.ok and "roi_heads.box_predictor.cls_score.weight" in report.ignored
    assert any("style='caffe'" in n for n in report.notes)  # MSRA weights put the stride in the 1x1
    _assert_same_tensors(model, resnet50_state)


def test_caffe2_imagenet_pkl_names(tmp_path):
    model = randomize_norms_(create_backbone("resnet50", style="caffe", norm="FrozenBN"))
    ours = model.state_dict()
    blobs = {"conv1_w": ours["conv1.weight"], "res_conv1_bn_s": ours["bn1.weight"], "res_conv1_bn_b": ours["bn1.bias"]}
    for stage in range(1, 5):
        for block in range(len(getattr(model, f"layer{stage}"))):
            prefix, c2 = f"layer{stage}.{block}", f"res{stage + 1}_{block}"
            for i, branch in enumerate("abc", start=1):
                blobs[f"{c2}_branch2{branch}_w"] = ours[f"{prefix}.conv{i}.weight"]
                blobs[f"{c2}_branch2{branch}_bn_s"] = ours[f"{prefix}.bn{i}.weight"]
                blobs[f"{c2}_branch2{branch}_bn_b"] = ours[f"{prefix}.bn{i}.bias"]
            if block == 0:
                blobs[f"{c2}_branch1_w"] = ours[f"{prefix}.downsample.0.weight"]
                blobs[f"{c2}_branch1_bn_s"] = ours[f"{prefix}.downsample.1.weight"]
                blobs[f"{c2}_branch1_bn_b"] = ours[f"{prefix}.downsample.1.bias"]
    blobs["pred_w"] = torch.zeros(1000, 2048)
    path = tmp_path / "MSRA-R-50.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": {k: v.numpy() for k, v in blobs.items()}}, f)
    fresh = create_backbone("resnet50", style="caffe", norm="FrozenBN")
    report = load_weights(fresh, path)
    assert report.format == "caffe2" and report.ok
    assert all(k.endswith(("running_mean", "running_var")) for k in report.initialized)
    state = fresh.state_dict()
    assert torch.equal(state["layer3.2.bn2.weight"], ours["layer3.2.bn2.weight"])
    assert torch.equal(state["layer1.0.bn1.running_var"], torch.ones(64))
    # Loaded into a pytorch-style model, the report says which style the weights expect.
    assert any("style='caffe'" in n for n in load_weights(create_backbone("resnet50"), path).notes)


def test_mmdet_checkpoint_with_deep_stem(tmp_path):
    reference = randomize_norms_(create_backbone("resnet50d"))
    mm_stem = {"conv1.0": "stem.0", "conv1.1": "stem.1", "conv1.3": "stem.3", "conv1.4": "stem.4", "conv1.6": "stem.6", "bn1": "stem.7"}
    state = {}
    for key, value in reference.state_dict().items():
        module, _, leaf = key.rpartition(".")
        state["backbone." + f"{mm_stem.get(module, module)}.{leaf}"] = value
    state["neck.lateral_convs.0.conv.weight"] = torch.zeros(256, 256, 1, 1)
    path = tmp_path / "mmdet.pth"
    torch.save({"meta": {"epoch": 12}, "state_dict": state}, path)
    model = create_backbone("resnet50d")
    report = load_weights(model, path)
    assert report.format == "mmdet" and report.ok and report.ignored == ["neck.lateral_convs.0.conv.weight"]
    _assert_same_tensors(model, reference.state_dict())


def test_torchvision_detector_checkpoint():
    detector = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    randomize_norms_(detector.backbone.body)
    model = create_backbone("resnet50", norm="FrozenBN")
    report = load_weights(model, detector.state_dict())
    assert report.format == "torchvision_detector" and report.ok
    assert any(k.startswith("rpn.") for k in report.ignored)
    body = {k.removeprefix("backbone.body."): v for k, v in detector.state_dict().items() if k.startswith("backbone.body.")}
    _assert_same_tensors(model, {k: v for k, v in body.items() if "num_batches" not in k})


def test_timm_safetensors_file(tmp_path):
    timm = pytest.importorskip("timm")
    safetensors = pytest.importorskip("safetensors.torch")
    reference = randomize_norms_(timm.create_model("res2net50_26w_4s", pretrained=False))
    path = tmp_path / "model.safetensors"
    safetensors.save_file(reference.state_dict(), str(path))
    model = create_backbone("res2net50_26w_4s")
    report = load_weights(model, path)
    assert report.ok and sorted(report.ignored) == ["fc.bias", "fc.weight"]
    _assert_same_tensors(model, {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")})


# ------------------------------------------------------------------------------------ sources
def test_url_is_read_from_the_hub_cache_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    reference = create_backbone("resnet18")
    torch.save(reference.state_dict(), tmp_path / "checkpoints" / "resnet18-test.pth")
    model = create_backbone("resnet18", weights="https://example.invalid/models/resnet18-test.pth")
    _assert_same_tensors(model, reference.state_dict())


def test_uncached_url_without_network_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(WeightsFileError, match="could not download .* put the file at .*nothing.pth"):
        load_weights(create_backbone("resnet18"), "http://127.0.0.1:9/nothing.pth")


def test_missing_file(tmp_path):
    with pytest.raises(WeightsFileError, match="checkpoint file not found: .*absent.pth"):
        create_backbone("resnet18", weights=tmp_path / "absent.pth")


def test_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.pth"
    torch.save(create_backbone("resnet18").state_dict(), path)
    path.write_bytes(path.read_bytes()[:5000])  # truncated download
    with pytest.raises(WeightsFileError, match="corrupt.pth is not a readable checkpoint"):
        load_weights(create_backbone("resnet18"), path)


@pytest.mark.parametrize("protocol", [2, 4])
def test_pkl_written_by_python3_loads_and_a_truncated_one_is_corrupt(tmp_path, protocol):
    state = create_backbone("resnet18").state_dict()
    blobs = {k: v.numpy() for k, v in state.items() if "num_batches" not in k}
    path = tmp_path / "r18.pkl"
    with open(path, "wb") as f:  # protocol 2 stores the arrays' bytes through _codecs.encode
        pickle.dump(blobs, f, protocol=protocol)
    model = create_backbone("resnet18")
    assert load_weights(model, path).ok
    assert torch.equal(model.state_dict()["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])
    path.write_bytes(path.read_bytes()[:5000])  # a half-written file is corrupt, not "code"
    with pytest.raises(WeightsFileError, match="r18.pkl is not a readable checkpoint .*truncated"):
        load_weights(create_backbone("resnet18"), path)


class _Payload:
    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_pickled_code_is_refused(tmp_path):
    for name in ("evil.pth", "evil.pkl"):
        path = tmp_path / name
        with open(path, "wb") as f:
            pickle.dump({"model": _Payload()}, f)
        with pytest.raises(WeightsFileError, match="objects other than tensors"):
            load_weights(create_backbone("resnet18"), path)


def test_checkpoint_without_tensors(tmp_path):
    path = tmp_path / "empty.pth"
    torch.save({"epoch": 3}, path)
    with pytest.raises(WeightsFileError, match="holds no tensors"):
        load_weights(create_backbone("resnet18"), path)


# ------------------------------------------------------------------------------------- reports
def test_wrong_architecture_fails_with_the_report():
    with pytest.raises(WeightsMismatchError) as err:
        create_backbone("resnet50", weights=create_backbone("resnet18").state_dict())
    report = err.value.report
    assert report.mismatched and report.missing and not report.loaded
    assert ("layer1.0.conv1.weight", (64, 64, 3, 3), (64, 64, 1, 1)) in report.mismatched
    assert "layer1.0.conv1.weight" in str(err.value)


def test_deeper_checkpoint_is_unexpected_not_silently_truncated():
    with pytest.raises(WeightsMismatchError, match="unexpected"):
        create_backbone("resnet50", weights=create_backbone("resnet101").state_dict())


def test_non_strict_load_reports_and_loads_what_fits():
    source = create_backbone("resnet50", norm="GN").state_dict()
    model = create_backbone("resnet50")
    report = load_weights(model, source, strict=False)
    assert not report.ok and report.missing and "conv1.weight" in report.loaded
    assert torch.equal(model.conv1.weight, source["conv1.weight"])


def test_unbuilt_stages_and_classifier_are_ignored():
    reference = torchvision.models.resnet50(weights=None).state_dict()
    model = create_backbone("resnet50", out_features=("c2", "c3"))
    report = load_weights(model, reference)
    assert report.ok
    assert "fc.weight" in report.ignored and "layer4.2.conv3.weight" in report.ignored


def test_unknown_format():
    with pytest.raises(ValueError, match="format must be one of 'auto', 'torchvision'"):
        load_weights(create_backbone("resnet18"), {}, format="caffe")
