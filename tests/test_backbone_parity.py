"""Every variant equals its reference (torchvision or timm) given the same weights, at output
stride 32, 16 and 8, and its parameter count is the published one."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torchvision.models.feature_extraction import create_feature_extractor

from backbones import TAPS, create_backbone, get_variant, list_backbones, load_weights
from tests.helpers import assert_close_rel, randomize_norms_

#: Published parameter counts, ImageNet classifier included (torchvision / timm model cards).
PUBLISHED_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "resnext50_32x4d": 25_028_904,
    "resnext101_32x8d": 88_791_336,
    "resnext101_64x4d": 83_455_272,
    "wide_resnet50_2": 68_883_240,
    "res2net50_26w_4s": 25_699_120,
    "res2net101_26w_4s": 45_206_688,
    "res2net50d": 25_718_352,
}

#: Trunk-only counts (no classifier): the README's variant table reports these.
TRUNK_PARAMS = {
    "resnet18": 11_176_512,
    "resnet50": 23_508_032,
    "resnext101_32x8d": 86_742_336,
    "res2net50_26w_4s": 23_650_120,
}

STAGE_NODES = {"relu": "stem", "layer1": "c2", "layer2": "c3", "layer3": "c4", "layer4": "c5"}


def _reference(name: str, output_stride: int) -> tuple[torch.nn.Module, callable]:
    """The reference model and a function mapping its outputs to ``{tap: tensor}``."""
    variant = get_variant(name)
    basic_dilated = variant.block == "basic" and output_stride != 32  # torchvision refuses this
    if variant.reference == "torchvision" and not basic_dilated:
        dilate = {32: [False, False, False], 16: [False, False, True], 8: [False, True, True]}[output_stride]
        model = getattr(torchvision.models, name)(weights=None, replace_stride_with_dilation=dilate)
        extractor = create_feature_extractor(model, STAGE_NODES)
        return model, lambda x: extractor(x)
    model = timm.create_model(
        name, pretrained=False, features_only=True, out_indices=(0, 1, 2, 3, 4), output_stride=output_stride
    )
    return model, lambda x: dict(zip(TAPS, model(x)))


@pytest.mark.parametrize("output_stride", [32, 16, 8])
@pytest.mark.parametrize("name", list_backbones())
def test_matches_reference(name: str, output_stride: int):
    ref, ref_features = _reference(name, output_stride)
    randomize_norms_(ref).eval()
    ours = create_backbone(name, out_features=TAPS, output_stride=output_stride).eval()
    report = load_weights(ours, ref.state_dict())
    assert report.ok and not report.initialized, report

    x = torch.randn(2, 3, 67, 61)  # odd sizes exercise the padding and ceil_mode choices
    with torch.no_grad():
        expected = ref_features(x)
        got = ours(x)
    assert list(got) == list(TAPS)
    for tap, info in zip(TAPS, ours.feature_info):
        assert_close_rel(got[tap], expected[tap], what=f"{name} OS{output_stride} {tap}")
        assert got[tap].shape[1] == info.channels
    assert [i.stride for i in ours.feature_info] == [2, 4, 8, min(16, output_stride), output_stride]


@pytest.mark.parametrize("name", [n for n in list_backbones() if get_variant(n).reference == "torchvision"])
def test_torchvision_checkpoint_loads_strictly(name: str):
    reference = getattr(torchvision.models, name)(weights=None).state_dict()
    trunk = {k: v for k, v in reference.items() if not k.startswith("fc.")}
    ours = create_backbone(name)
    ours.load_state_dict(trunk, strict=True)  # same keys and shapes, nothing more, nothing less


@pytest.mark.parametrize("name", [n for n in list_backbones() if get_variant(n).reference == "timm"])
def test_timm_keys_are_ours(name: str):
    reference = timm.create_model(name, pretrained=False).state_dict()
    trunk = {k: v for k, v in reference.items() if not k.startswith("fc.")}
    ours = create_backbone(name).state_dict()
    assert set(ours) == set(trunk)
    assert all(ours[k].shape == trunk[k].shape for k in trunk)


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_parameter_count_with_classifier(name: str):
    model = create_backbone(name)
    trunk = sum(p.numel() for p in model.parameters())
    width = model.feature_info[-1].channels
    assert trunk + width * 1000 + 1000 == PUBLISHED_PARAMS[name]
    if name in TRUNK_PARAMS:
        assert trunk == TRUNK_PARAMS[name]
