"""The FPN adapter: same outputs as torchvision's resnet_fpn_backbone, levels, channels, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import resnet50
from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from backbones import FeatureInfo, FPNBackbone, create_backbone, create_fpn_backbone
from tests.helpers import randomize_norms_ as randomize_

TV_NAMES = {"0": "p2", "1": "p3", "2": "p4", "3": "p5", "pool": "p6"}


def _compare(ours: FPNBackbone, reference: nn.Module, names: dict[str, str], size: int = 96) -> None:
    result = ours.load_state_dict(reference.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert all(k.endswith("num_batches_tracked") for k in result.missing_keys)
    ours.eval(), reference.eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    assert list(got) == [names[k] for k in expected]
    for key, value in expected.items():
        torch.testing.assert_close(got[names[key]], value, rtol=1e-4, atol=1e-5)
        assert value.abs().mean() > 1e-3


def test_maxpool_pyramid_matches_torchvision():
    reference = randomize_(resnet_fpn_backbone(backbone_name="resnet50", weights=None, trainable_layers=5))
    ours = create_fpn_backbone("resnet50", norm="FrozenBN")
    assert set(ours.state_dict()) == set(reference.state_dict())  # key for key
    _compare(ours, reference, TV_NAMES)


@pytest.mark.parametrize("source, in_channels", [("p5", 256), ("c5", 2048)])
def test_p6p7_pyramid_matches_torchvision(source, in_channels):
    reference = randomize_(
        resnet_fpn_backbone(
            backbone_name="resnet50", weights=None, trainable_layers=5,
            returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(in_channels, 256),
        )
    )
    ours = create_fpn_backbone("resnet50", extra="p6p7", p6p7_from=source, norm="FrozenBN")
    assert set(ours.state_dict()) == set(reference.state_dict())
    _compare(ours, reference, {"0": "p3", "1": "p4", "2": "p5", "p6": "p6", "p7": "p7"}, size=128)


def test_normed_pyramid_matches_torchvision_v2_layout():
    trunk = resnet50()
    layers = {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}
    reference = randomize_(BackboneWithFPN(trunk, layers, [256, 512, 1024, 2048], 256, norm_layer=nn.BatchNorm2d))
    ours = create_fpn_backbone("resnet50", fpn_norm="BN")
    _compare(ours, reference, TV_NAMES)


@pytest.mark.parametrize(
    "name, channels", [("resnet18", [64, 128, 256, 512]), ("res2net50_26w_4s", [256, 512, 1024, 2048])]
)
def test_levels_channels_and_strides(name, channels):
    model = create_fpn_backbone(name, fpn_channels=64).eval()
    assert [c.channels for c in model.body.feature_info] == channels
    assert [m[0].in_channels for m in model.fpn.inner_blocks] == channels
    assert model.out_channels == 64
    assert model.feature_info == [FeatureInfo(f"p{k}", 64, 2**k) for k in range(2, 7)]
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64))
    assert {k: tuple(v.shape[1:]) for k, v in out.items()} == {
        f"p{k}": (64, 64 // 2**k, 64 // 2**k) for k in range(2, 7)
    }


def test_custom_taps_and_no_extra_levels():
    model = create_fpn_backbone("resnet18", extra=None, out_features=("c3", "c4"), fpn_channels=32)
    assert model.level_names == ("p3", "p4") and model.trunk_levels == ("p3", "p4")
    assert model.body.stage_names == ("layer1", "layer2", "layer3")  # c5 stage not built
    out = model(torch.rand(1, 3, 64, 64))
    assert list(out) == ["p3", "p4"] and out["p4"].shape[-1] == 4


def test_p6p7_default_taps_and_dilated_trunk_strides():
    model = create_fpn_backbone("resnet18", extra="p6p7", fpn_channels=32, output_stride=16)
    assert model.trunk_levels == ("p3", "p4", "p5")
    assert [(i.name, i.stride) for i in model.feature_info] == [("p3", 8), ("p4", 16), ("p5", 16), ("p6", 32), ("p7", 64)]
    out = model(torch.rand(1, 3, 64, 64))
    assert [v.shape[-1] for v in out.values()] == [8, 4, 4, 2, 1]


def test_group_norm_and_trunk_options_pass_through():
    model = create_fpn_backbone("resnet18", fpn_norm="GN", frozen_stages=2, fpn_channels=64)
    assert isinstance(model.fpn.inner_blocks[0][1], nn.GroupNorm)
    assert model.fpn.inner_blocks[0][0].bias is None  # a normed conv has no bias, as in torchvision
    assert not any(p.requires_grad for p in model.body.layer2.parameters())
    assert all(p.requires_grad for p in model.body.layer3.parameters())


def test_wraps_an_existing_trunk():
    trunk = create_backbone("resnet18", out_features=("c4", "c5"))
    model = FPNBackbone(trunk, fpn_channels=16, extra="maxpool")
    assert model.level_names == ("p4", "p5", "p6")
    assert model.body is trunk


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(extra="p8"), "extra must be one of"),
        (dict(out_features=("stem", "c2")), "stage taps"),
        (dict(fpn_channels=0), "fpn_channels"),
        (dict(extra="p6p7", p6p7_from="c4"), "p6p7_from"),
        (dict(fpn_norm="FrozenBN"), "fpn_norm"),
        (dict(frozen_stage=1), "unknown option"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_fpn_backbone("resnet18", **kwargs)


def test_unknown_backbone_name():
    with pytest.raises(ValueError, match="unknown backbone 'resnet51'.*resnet50"):
        create_fpn_backbone("resnet51")
