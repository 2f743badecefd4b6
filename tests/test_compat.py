"""The private torch / torchvision APIs behind ``backbones/compat.py`` and ``heads/compat.py``.

One test per private API: it must still exist and still compute what this package relies on
(checked against a reference written with public APIs). A failure after an upgrade names the API
and the installed versions; the compat module then needs its fallback or an update.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.detection.retinanet import RetinaNetRegressionHead
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign, box_area, generalized_box_iou_loss
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from backbones import compat as backbones_compat
from heads import compat as heads_compat

VERSIONS = f"torch {torch.__version__}, torchvision {torchvision.__version__}"


def _broken(api: str, what: str, where: str) -> str:
    return f"{api} {what} with {VERSIONS}; update {where}"


# ------------------------------------------------------------------------------- backbones/compat
@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
@pytest.mark.parametrize("relu, with_residual", [(False, False), (True, False), (True, True), (False, True)])
def test_mkldnn_convolution_pointwise(relu: bool, with_residual: bool):
    api = "torch.ops.mkldnn._convolution_pointwise"
    assert backbones_compat.has_onednn_pointwise(), _broken(
        api, "(with its .binary overload) is missing", "backbones/compat.py (FusedConv2d now falls back to F.conv2d)"
    )
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 9, 11, generator=gen)
    weight = torch.randn(6, 4, 3, 3, generator=gen)  # groups=2
    bias = torch.randn(6, generator=gen)
    residual = torch.randn(2, 6, 5, 6, generator=gen) if with_residual else None
    with torch.no_grad():
        got = backbones_compat.onednn_conv_pointwise(
            x, weight, bias, padding=(1, 1), stride=(2, 2), dilation=(1, 1), groups=2, relu=relu, residual=residual
        )
        expected = F.conv2d(x, weight, bias, stride=2, padding=1, groups=2)
        if residual is not None:
            expected = expected + residual
        expected = F.relu(expected) if relu else expected
    torch.testing.assert_close(
        got, expected, rtol=1e-5, atol=1e-5,
        msg=lambda m: _broken(api, f"no longer computes act(conv + bias [+ residual]) ({m})", "backbones/compat.py"),
    )


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
@pytest.mark.parametrize("relu", [False, True])
def test_mkldnn_convolution_pointwise_inplace(relu: bool):
    api = "torch.ops.mkldnn._convolution_pointwise_.binary"
    assert backbones_compat._ONEDNN_POINTWISE_INPLACE is not None, _broken(
        api, "is missing", "backbones/compat.py (the residual add now writes a new tensor: slower, same result)")
    gen = torch.Generator().manual_seed(1)
    x, weight, bias = torch.randn(2, 8, 7, 7, generator=gen), torch.randn(16, 8, 1, 1, generator=gen), torch.randn(16)
    residual = torch.randn(2, 16, 7, 7, generator=gen)
    expected = F.conv2d(x, weight, bias) + residual
    expected = F.relu(expected) if relu else expected
    with torch.no_grad():
        got = backbones_compat.onednn_conv_pointwise(
            x, weight, bias, padding=(0, 0), stride=(1, 1), dilation=(1, 1), groups=1, relu=relu, residual=residual,
            accumulate=True,
        )
    assert got.data_ptr() == residual.data_ptr(), _broken(api, "no longer writes into its first argument",
                                                         "backbones/compat.py")
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5,
                               msg=lambda m: _broken(api, f"no longer computes act(conv + bias + other) ({m})",
                                                     "backbones/compat.py"))


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
def test_mkldnn_reorder_convolution_weight():
    api = "torch.ops.mkldnn._reorder_convolution_weight"
    assert hasattr(torch.ops.mkldnn, "_reorder_convolution_weight"), _broken(
        api, "is missing", "backbones/compat.py (FusedConv2d now reorders its weight on every call: slower)")
    gen = torch.Generator().manual_seed(2)
    x, weight = torch.randn(2, 8, 9, 9, generator=gen), torch.randn(12, 4, 3, 3, generator=gen)
    packed = backbones_compat.onednn_prepack_weight(weight, padding=(1, 1), stride=(1, 1), dilation=(1, 1), groups=2,
                                                    input_shape=x.shape)
    assert packed.is_mkldnn and torch.equal(packed.to_dense(), weight), _broken(api, "no longer keeps the values",
                                                                                "backbones/compat.py")
    with torch.no_grad():
        got = backbones_compat.onednn_conv_pointwise(x, packed, None, padding=(1, 1), stride=(1, 1), dilation=(1, 1),
                                                     groups=2, relu=False)
    torch.testing.assert_close(got, F.conv2d(x, weight, padding=1, groups=2), rtol=1e-5, atol=1e-5,
                               msg=lambda m: _broken(api, f"output is not taken by the convolution ({m})",
                                                     "backbones/compat.py"))


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
@pytest.mark.parametrize("with_bias", [True, False])
def test_mkldnn_linear_pointwise(with_bias: bool):
    api = "torch.ops.mkldnn._linear_pointwise"
    assert backbones_compat.has_onednn_linear(), _broken(api, "is missing",
                                                         "backbones/compat.py (OneDnnLinear now runs F.linear)")
    gen = torch.Generator().manual_seed(3)
    x, weight = torch.randn(9, 33, generator=gen), torch.randn(17, 33, generator=gen)
    bias = torch.randn(17, generator=gen) if with_bias else None
    with torch.no_grad():
        got = backbones_compat.onednn_linear(x, weight, bias)
    torch.testing.assert_close(got, F.linear(x, weight, bias), rtol=1e-5, atol=1e-5,
                               msg=lambda m: _broken(api, f"no longer computes x @ W.T + b ({m})", "backbones/compat.py"))


def test_forward_hooks_observe():
    api = "torch.nn.modules.module._global_forward_hooks"
    block = nn.Sequential(nn.Conv2d(2, 2, 1), nn.ReLU())
    assert not backbones_compat.forward_hooks_observe(block), _broken(api, "is missing or not a dict",
                                                                       "backbones/compat.py (in-place residual adds off)")
    handle = block[1].register_forward_hook(lambda *args: None)
    assert backbones_compat.forward_hooks_observe(block)
    handle.remove()
    handle = nn.modules.module.register_module_forward_hook(lambda *args: None)
    try:
        assert backbones_compat.forward_hooks_observe(block), _broken(api, "no longer holds the global forward hooks",
                                                                       "backbones/compat.py")
    finally:
        handle.remove()


def test_batch_norm_base_class():
    api = "torch.nn.modules.batchnorm._BatchNorm"
    base = getattr(nn.modules.batchnorm, "_BatchNorm", None)
    assert base is not None, _broken(
        api, "is missing", "backbones/compat.py (is_batch_norm now uses the public BN classes)"
    )
    assert backbones_compat.BATCH_NORM_TYPES is base
    tracked = [nn.BatchNorm1d(3), nn.BatchNorm2d(3), nn.BatchNorm3d(3), nn.SyncBatchNorm(3)]
    others = [nn.GroupNorm(1, 3), nn.InstanceNorm2d(3, track_running_stats=True), nn.LayerNorm(3), FrozenBatchNorm2d(3)]
    for norm in tracked + others:
        assert isinstance(norm, base) == (norm in tracked), _broken(
            api, f"classifies {type(norm).__name__} otherwise", "backbones/compat.py"
        )
    for norm, spatial in zip(tracked, (1, 2, 3)):  # SyncBatchNorm needs a process group in training
        norm.train()(torch.randn(4, 3, *(5,) * spatial))
        assert not torch.equal(norm.running_mean, torch.zeros(3)), _broken(
            api, f"subclass {type(norm).__name__} no longer updates running statistics in training", "backbones/norm.py"
        )


def test_module_child_slots():
    api = "torch.nn.Module._modules"
    shared = nn.ReLU()
    seq = nn.Sequential(OrderedDict([("conv", nn.Conv2d(1, 1, 1)), ("act", shared), ("again", shared)]))
    seq.register_module("empty", None)
    slots = getattr(seq, "_modules", None)
    assert isinstance(slots, dict), _broken(api, "is no longer a dict", "backbones/compat.py (named_child_slots)")
    assert list(slots) == ["conv", "act", "again", "empty"], _broken(
        api, "no longer lists every slot in registration order", "backbones/compat.py"
    )
    assert backbones_compat.named_child_slots(seq) == list(slots.items())
    seq.act = nn.Identity()
    assert type(backbones_compat.named_child_slots(seq)[1][1]) is nn.Identity, _broken(
        api, "does not reflect setattr replacements", "backbones/compat.py"
    )
    plain = nn.Sequential(nn.Conv2d(1, 1, 1), nn.ReLU())
    assert backbones_compat.named_child_slots(plain) == list(plain.named_children())


@pytest.mark.parametrize("from_p5", [True, False])
def test_last_level_p6p7_source(from_p5: bool):
    api = "torchvision LastLevelP6P7.use_P5"
    block = LastLevelP6P7(8, 8)  # as many C5 channels as the pyramid: torchvision would pick P5
    assert getattr(block, "use_P5", None) is True, _broken(
        api, "is missing or no longer defaults to in == out", "backbones/compat.py"
    )
    backbones_compat.set_p6p7_source(block, from_p5=from_p5)
    p5, c5 = torch.randn(1, 8, 8, 8), torch.randn(1, 8, 8, 8)
    with torch.no_grad():
        levels, names = block([p5], [c5], ["p5"])
        source = p5 if from_p5 else c5
        p6 = F.conv2d(source, block.p6.weight, block.p6.bias, stride=2, padding=1)
        p7 = F.conv2d(F.relu(p6), block.p7.weight, block.p7.bias, stride=2, padding=1)
    assert names == ["p5", "p6", "p7"]
    for got, expected in zip(levels[1:], (p6, p7)):
        torch.testing.assert_close(
            got, expected, msg=lambda m: _broken(api, f"no longer selects P6's input ({m})", "backbones/compat.py")
        )


# ----------------------------------------------------------------------------------- heads/compat
def _pyramid(image_shapes: list[tuple[int, int]]) -> list[torch.Tensor]:
    height, width = (max(s[i] for s in image_shapes) for i in (0, 1))
    return [torch.randn(1, 4, math.ceil(height / 2**k), math.ceil(width / 2**k)) for k in (2, 3, 4, 5)]


def _boxes() -> list[torch.Tensor]:
    corner = torch.rand(2, 40, 2) * 100
    return [torch.cat([c, c + 1 + torch.rand(40, 2) * torch.tensor([10.0, 300.0])], dim=1) for c in corner]


@pytest.mark.parametrize("fallback", [False, True])
def test_poolers_setup_scales(fallback: bool, monkeypatch: pytest.MonkeyPatch):
    api = "torchvision.ops.poolers._setup_scales"
    if fallback:
        monkeypatch.setattr(heads_compat, "_setup_scales", None)
    else:
        assert heads_compat._setup_scales is not None, _broken(
            api, "is missing", "heads/compat.py (setup_scales now probes a MultiScaleRoIAlign)"
        )
    shapes = [(200, 300), (256, 180)]
    features = _pyramid(shapes)
    pool = MultiScaleRoIAlign(["p2", "p3", "p4", "p5"], 7, 2, canonical_scale=224, canonical_level=4)
    scales, map_levels = heads_compat.setup_scales(pool, features, shapes)
    size = (max(s[0] for s in shapes), max(s[1] for s in shapes))
    expected_scales = [2.0 ** round(math.log2(f.shape[-2] / size[0])) for f in features]
    assert list(scales) == expected_scales, _broken(
        api, f"infers level scales {scales}, not {expected_scales}", "heads/compat.py"
    )
    boxes = _boxes()
    k_min, k_max = -round(math.log2(expected_scales[0])), -round(math.log2(expected_scales[-1]))
    side = torch.sqrt(torch.cat([box_area(b) for b in boxes]))
    expected = (torch.floor(4 + torch.log2(side / 224) + 1e-6).clamp(k_min, k_max) - k_min).long()
    assert torch.equal(map_levels(boxes), expected), _broken(
        api, "no longer maps boxes to levels as the FPN paper's rule", "heads/compat.py"
    )


def test_retinanet_regression_loss_type():
    api = "torchvision RetinaNetRegressionHead._loss_type"
    head = RetinaNetRegressionHead(8, num_anchors=1)
    assert getattr(head, "_loss_type", None) == "l1", _broken(
        api, "is missing or no longer 'l1' by default", "heads/compat.py"
    )
    heads_compat.set_box_loss(head, "giou")
    gen = torch.Generator().manual_seed(0)
    anchors = [torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 30.0, 20.0], [2.0, 1.0, 8.0, 9.0]])] * 2
    targets = [{"boxes": torch.tensor([[1.0, 1.0, 11.0, 12.0], [4.0, 6.0, 28.0, 22.0]])}] * 2
    matched = [torch.tensor([0, 1, -1]), torch.tensor([-1, 1, 0])]
    regression = torch.randn(2, 3, 4, generator=gen) * 0.1
    loss = head.compute_loss(targets, {"bbox_regression": regression}, anchors, matched)
    expected = 0.0
    for target, deltas, anchor, index in zip(targets, regression, anchors, matched):
        foreground = torch.where(index >= 0)[0]
        decoded = head.box_coder.decode_single(deltas[foreground], anchor[foreground])
        gt = target["boxes"][index[foreground]]
        expected += generalized_box_iou_loss(decoded, gt, reduction="sum", eps=1e-7) / max(1, foreground.numel())
    torch.testing.assert_close(
        loss, expected / len(targets),
        msg=lambda m: _broken(api, f"set to 'giou' no longer gives the GIoU box loss ({m})", "heads/compat.py"),
    )


@pytest.mark.skipif(not backbones_compat.has_onednn_pointwise(), reason="torch without the oneDNN convolution op")
def test_onednn_bf16_probe_matches_what_the_op_does():
    """``torch.ops.mkldnn._is_mkldnn_bf16_supported`` says whether oneDNN's bf16 convolution runs on
    this CPU (it refuses bf16 on AVX2-only CPUs), so the fused layers know when to fall back."""
    api = "torch.ops.mkldnn._is_mkldnn_bf16_supported"
    x = torch.randn(1, 4, 6, 6, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(4, 4, 3, 3, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    try:
        backbones_compat.onednn_conv_pointwise(x, weight, None, padding=(1, 1), stride=(1, 1), dilation=(1, 1),
                                               groups=1, relu=False)
        runs = True
    except RuntimeError:
        runs = False
    assert backbones_compat.onednn_bf16_supported() == runs, _broken(
        api, f"says {backbones_compat.onednn_bf16_supported()} where the bf16 convolution {'runs' if runs else 'fails'}",
        "backbones/compat.py")
