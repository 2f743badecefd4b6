"""The detection knobs of the trunk: taps, freezing, norms, checkpointing, DCN, stochastic depth,
zero-init, input channels, multi-grid, and their validation."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from backbones import UnknownBackboneError, create_backbone, list_backbones, load_weights
from backbones.blocks import ResidualBlock
from tests.helpers import assert_close_rel, randomize_norms_

FAMILIES = ["resnet18", "resnet50d", "resnext50_32x4d", "res2net50_26w_4s"]


def _stem_and_stages(model):
    return [nn.ModuleList([model.conv1, model.bn1])] + [getattr(model, n) for n in model.stage_names]


# ------------------------------------------------------------------------------------ feature taps
def test_taps_channels_and_strides():
    model = create_backbone("resnet50", out_features=("stem", "c3", "c5"))
    assert [tuple(i) for i in model.feature_info] == [("stem", 64, 2), ("c3", 512, 8), ("c5", 2048, 32)]
    out = model(torch.randn(1, 3, 64, 96))
    assert list(out) == ["stem", "c3", "c5"]
    assert out["c5"].shape == (1, 2048, 2, 3)


def test_stages_after_the_deepest_tap_are_not_built():
    model = create_backbone("resnet50", out_features=("c2", "c3"))
    assert model.stage_names == ("layer1", "layer2")
    assert not hasattr(model, "layer3") and not hasattr(model, "layer4")
    stem_only = create_backbone("resnet18", out_features=("stem",))
    assert not hasattr(stem_only, "layer1") and not hasattr(stem_only, "maxpool")
    assert list(stem_only(torch.randn(1, 3, 32, 32))) == ["stem"]


def test_taps_come_back_in_network_order_whatever_the_request_order():
    model = create_backbone("resnet18", out_features=["c4", "c2"])
    assert [i.name for i in model.feature_info] == ["c2", "c4"]


@pytest.mark.parametrize("output_stride", [16, 8])
def test_output_stride_by_dilation(output_stride: int):
    model = create_backbone("resnet50", output_stride=output_stride).eval()
    out = model(torch.randn(1, 3, 64, 64))
    assert out["c5"].shape[-1] == 64 // output_stride
    assert model.feature_info[-1].stride == output_stride


def test_multi_grid_dilates_the_last_stage_blocks():
    model = create_backbone("resnet50", output_stride=16, multi_grid=(1, 2, 4))
    assert [b.conv2.dilation for b in model.layer4] == [(2, 2), (4, 4), (8, 8)]
    assert model(torch.randn(1, 3, 64, 64))["c5"].shape[-1] == 4


# ---------------------------------------------------------------------------------------- freezing
@pytest.mark.parametrize("frozen_stages", [-1, 0, 1, 2, 3, 4])
def test_frozen_stages_survive_train(frozen_stages: int):
    model = create_backbone("resnet18", frozen_stages=frozen_stages)
    model.train()
    for index, part in enumerate(_stem_and_stages(model)):
        frozen = index <= frozen_stages
        assert all(p.requires_grad != frozen for p in part.parameters()), (frozen_stages, index)
        norms = [m for m in part.modules() if isinstance(m, nn.BatchNorm2d)]
        assert norms and all(m.training != frozen for m in norms), (frozen_stages, index)


def test_frozen_stages_get_no_gradient_and_keep_statistics():
    model = create_backbone("resnet18", frozen_stages=2).train()
    before = model.layer1[0].bn1.running_mean.clone()
    model(torch.randn(2, 3, 64, 64))["c5"].sum().backward()
    assert model.layer1[0].conv1.weight.grad is None
    assert model.layer3[0].conv1.weight.grad is not None
    assert torch.equal(model.layer1[0].bn1.running_mean, before)


def test_freeze_and_unfreeze_methods():
    model = create_backbone("resnet18")
    model.freeze(3).train()
    assert not any(p.requires_grad for p in model.layer3.parameters())
    assert all(p.requires_grad for p in model.layer4.parameters())
    assert not model.layer3[0].bn1.training
    model.unfreeze()
    assert all(p.requires_grad for p in model.parameters())
    assert model.layer3[0].bn1.training
    with pytest.raises(ValueError, match="frozen_stages"):
        model.freeze(7)


def test_frozen_bn_has_no_trainable_norm_parameters():
    model = create_backbone("res2net50_26w_4s", norm="FrozenBN")
    norms = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert norms and not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(not list(m.parameters()) for m in norms)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.endswith("weight") and "bn" not in n for n in trainable)


def test_norm_eval_leaves_running_stats_untouched():
    model = create_backbone("resnet50", norm_eval=True).train()
    stats = copy.deepcopy({k: v for k, v in model.state_dict().items() if "running" in k})
    model(torch.randn(2, 3, 64, 64))["c5"].mean().backward()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in stats.items())
    assert model.conv1.weight.grad is not None  # still trains


@pytest.mark.parametrize("name", FAMILIES)
def test_group_norm_every_family(name: str):
    model = create_backbone(name, norm="GN").train()
    assert any(isinstance(m, nn.GroupNorm) for m in model.modules())
    assert not any(isinstance(m, nn.modules.batchnorm._NormBase) for m in model.modules())
    out = model(torch.randn(1, 3, 64, 64))  # GN trains with a batch of one
    out["c5"].mean().backward()


def test_sync_bn_builds_and_runs_without_a_process_group():
    model = create_backbone("resnet18", norm="SyncBN")
    assert any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    model.eval()(torch.randn(1, 3, 32, 32))
    model.train()(torch.randn(2, 3, 32, 32))


# ----------------------------------------------------------------------------------- checkpointing
@pytest.mark.parametrize("name", ["resnet18", "res2net50_26w_4s"])
def test_checkpointing_gives_the_same_outputs_gradients_and_statistics(name: str):
    plain = randomize_norms_(create_backbone(name, drop_path_rate=0.1)).train()
    ckpt = create_backbone(name, drop_path_rate=0.1, checkpointing=True).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64)
    outputs = []
    for model in (plain, ckpt):
        torch.manual_seed(1)  # same stochastic-depth draws
        out = model(x)
        sum(v.square().mean() for v in out.values()).backward()
        outputs.append(out)
    for tap in outputs[0]:
        assert torch.allclose(outputs[0][tap], outputs[1][tap], rtol=1e-5, atol=1e-6)
    grads = {n: p.grad for n, p in plain.named_parameters()}
    for n, p in ckpt.named_parameters():
        assert torch.allclose(p.grad, grads[n], rtol=1e-4, atol=1e-7), n
    for k, v in plain.state_dict().items():
        assert torch.allclose(ckpt.state_dict()[k].float(), v.float()), k  # statistics updated once


# --------------------------------------------------------------------------------------------- DCN
@pytest.mark.parametrize("name", ["resnet50", "resnext50_32x4d", "res2net50_26w_4s"])
def test_dcn_with_zero_offsets_equals_the_plain_network(name: str):
    plain = randomize_norms_(create_backbone(name)).eval()
    dcn = create_backbone(name, dcn_stages=(3, 4)).eval()
    report = load_weights(dcn, plain.state_dict())
    assert report.ok and report.initialized and all("conv_offset" in k for k in report.initialized)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected, got = plain(x), dcn(x)
    for tap in expected:
        assert_close_rel(got[tap], expected[tap], rtol=1e-4, what=tap)


def test_dcn_trains_its_offsets():
    model = create_backbone("resnet50", dcn_stages=(2,), out_features=("c3",)).train()
    model(torch.randn(2, 3, 64, 64))["c3"].square().mean().backward()
    offset = model.layer2[0].conv2.conv_offset
    assert offset.weight.grad is not None and offset.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------ stochastic depth, zero-init
def test_drop_path_is_random_in_training_and_off_in_eval():
    model = randomize_norms_(create_backbone("resnet50", drop_path_rate=0.5, out_features=("c3",)))
    x = torch.randn(4, 3, 32, 32)
    model.train()
    assert not torch.equal(model(x)["c3"], model(x)["c3"])
    reference = create_backbone("resnet50", out_features=("c3",))
    reference.load_state_dict(model.state_dict())  # after training forwards moved the statistics
    model.eval(), reference.eval()
    assert torch.equal(model(x)["c3"], reference(x)["c3"])


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("norm", ["BN", "FrozenBN", "GN"])
def test_zero_init_residual_makes_every_block_the_identity_branch(name: str, norm: str):
    model = create_backbone(name, zero_init_residual=True, norm=norm)
    blocks = [m for m in model.modules() if isinstance(m, ResidualBlock)]
    assert blocks and all(torch.count_nonzero(b.last_norm.weight) == 0 for b in blocks)


# ---------------------------------------------------------------------------------- input channels
def test_single_channel_input_adapts_pretrained_rgb_weights():
    rgb = randomize_norms_(create_backbone("resnet18")).eval()
    grey = create_backbone("resnet18", in_channels=1, weights=rgb.state_dict()).eval()
    x = torch.randn(1, 1, 64, 64)
    assert_close_rel(grey(x)["c5"], rgb(x.expand(-1, 3, -1, -1))["c5"], what="grey vs RGB of a grey image")


def test_four_channel_input_keeps_the_weights_rescaled():
    rgb = create_backbone("resnet50d")
    rgbn = create_backbone("resnet50d", in_channels=4)
    report = load_weights(rgbn, rgb.state_dict())
    assert "adapted" in report.notes[0]
    w, w4 = rgb.conv1[0].weight, rgbn.conv1[0].weight
    assert torch.allclose(w4, torch.cat([w, w[:, :1]], dim=1) * 0.75)


# ------------------------------------------------------------------------------------- bad input
def test_unknown_name_lists_close_matches():
    with pytest.raises(UnknownBackboneError, match="resnet50") as err:
        create_backbone("resnet05")
    assert isinstance(err.value, ValueError)
    with pytest.raises(UnknownBackboneError, match="list_backbones"):
        create_backbone("vgg16")


def test_list_backbones_pattern():
    assert list_backbones("res2net50_26w_*") == ["res2net50_26w_4s", "res2net50_26w_6s", "res2net50_26w_8s"]
    assert len(list_backbones()) == 22


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(style="tf"), "style must be one of 'pytorch', 'caffe'"),
        (dict(norm="bn"), "norm must be one of 'BN', 'SyncBN', 'GN', 'FrozenBN'"),
        (dict(output_stride=4), "output_stride must be one of 32, 16, 8"),
        (dict(frozen_stages=5), "frozen_stages must be an integer from -1"),
        (dict(frozen_stages=3, out_features=("c2",)), "frozen_stages must be an integer from -1 .* to 1"),
        (dict(deep_stem="yes"), "deep_stem must be True or False"),
        (dict(drop_path_rate=1.5), r"drop_path_rate must be a number in \[0, 1\)"),
        (dict(in_channels=0), "in_channels must be a positive integer"),
        (dict(dcn_stages=(5,)), "dcn_stages must hold stage numbers from 1 to 4"),
        (dict(multi_grid=(1, 2)), "multi_grid must give one positive integer per block"),
        (dict(multi_grid=(1, 2, 4), out_features=("c4",)), "multi_grid dilates the last stage"),
        (dict(out_features=("c6",)), "out_features must be a non-empty list of distinct taps among stem, c2"),
        (dict(out_features=()), "out_features must be a non-empty list"),
        (dict(groups=64), "unknown option.*groups.*valid options: style"),
    ],
)
def test_bad_option_values_name_the_option_and_the_allowed_values(options, message):
    with pytest.raises(ValueError, match=message):
        create_backbone("resnet50", **options)


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("resnet18", dict(style="caffe"), "only style='pytorch' applies"),
        ("res2net50_26w_4s", dict(style="caffe"), "only style='pytorch' applies"),
        ("resnet34", dict(dcn_stages=(3,)), "dcn_stages needs bottleneck blocks"),
    ],
)
def test_options_a_family_cannot_honour_are_errors(name, options, message):
    with pytest.raises(ValueError, match=message):
        create_backbone(name, **options)


def test_caffe_style_moves_the_stride_to_the_first_1x1():
    model = create_backbone("resnet50", style="caffe")
    assert model.layer2[0].conv1.stride == (2, 2) and model.layer2[0].conv2.stride == (1, 1)
    assert model(torch.randn(1, 3, 64, 64))["c3"].shape[-1] == 8


@pytest.mark.parametrize(
    "x, message",
    [
        (torch.randn(3, 64, 64), r"expected a 4-D \(N, C, H, W\) input; got shape \(3, 64, 64\)"),
        (torch.randn(1, 4, 64, 64), "expected 3 input channels; got shape"),
    ],
)
def test_wrong_input_rank_or_channels(x, message):
    with pytest.raises(ValueError, match=message):
        create_backbone("resnet18")(x)
