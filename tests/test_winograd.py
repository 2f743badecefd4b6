"""Winograd F(4x4, 3x3) convolutions: the same outputs as the direct convolution (to the rounding
the algorithm adds), taken by ``optimize_for_inference`` only where they pay, and never with
``winograd=False``."""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import backbones.inference as inference
import backbones.winograd as winograd
import heads
from backbones import FusedConv2d, optimize_for_inference
from backbones.compat import has_onednn_pointwise
from backbones.winograd import winograd_conv3x3, winograd_pays, winograd_weight
from tests.helpers import assert_close_rel

pytestmark = pytest.mark.skipif(not has_onednn_pointwise(), reason="needs torch's oneDNN convolution op")

#: The two ways of transforming: PyTorch ops, and the fused Numba loops (where Numba is installed).
TRANSFORMS = [pytest.param(False, id="torch-ops"),
              pytest.param(True, id="numba", marks=pytest.mark.skipif(
                  winograd.fused_transforms() is None, reason="needs Numba (pip install '.[fast]')"))]

#: Winograd's rounding error relative to the output scale (measured: about 1.5e-5 in fp32).
RTOL = 1e-4


def _reference(x, weight, bias, relu):
    out = F.conv2d(x.double(), weight.double(), None if bias is None else bias.double(), padding=1)
    return F.relu(out) if relu else out


@pytest.mark.parametrize("fused", TRANSFORMS)
def test_hand_value(fused):
    """All-ones 4x5 image and 3x3 kernel: each output counts its in-image neighbours (4 at the
    corners, 6 on the edges, 9 inside), plus the bias."""
    x = torch.ones(1, 1, 4, 5)
    weight, bias = winograd_weight(torch.ones(1, 1, 3, 3), torch.tensor([0.5]))
    expected = torch.tensor([[4, 6, 6, 6, 4], [6, 9, 9, 9, 6], [6, 9, 9, 9, 6], [4, 6, 6, 6, 4]]) + 0.5
    with torch.inference_mode():
        torch.testing.assert_close(winograd_conv3x3(x, weight, bias, fused=fused)[0, 0], expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("fused", TRANSFORMS)
@pytest.mark.parametrize(
    "shape, out_channels, relu, with_bias",
    [((1, 8, 16, 20), 8, True, True), ((2, 6, 13, 10), 12, False, True), ((1, 5, 7, 9), 3, True, False),
     ((3, 17, 6, 23), 9, True, True)],
)
def test_equals_the_direct_convolution(shape, out_channels, relu, with_bias, fused):
    """Sizes that are and are not multiples of the 4x4 tile, batches, ReLU or not, no bias, odd
    channel counts (the fused loops' vector remainders)."""
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    w = torch.randn(out_channels, shape[1], 3, 3) / 3
    b = torch.randn(out_channels) if with_bias else None
    weight, bias = winograd_weight(w, b)
    with torch.inference_mode():
        got = winograd_conv3x3(x, weight, bias, relu=relu, fused=fused)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert_close_rel(got.double(), _reference(x, w, b, relu), rtol=RTOL, what="winograd")
    assert (got.double() - _reference(x, w, b, relu)).abs().max() > 0  # it is not the direct conv


@pytest.mark.parametrize("fused", TRANSFORMS[1:])
def test_fused_transforms_equal_the_torch_ops(fused):
    """The Numba loops compute the PyTorch-op transforms (to float rounding), NCHW input included,
    and are what runs by default; they use PyTorch's thread count."""
    kernels = winograd.fused_transforms()
    x = torch.randn(2, 24, 11, 18)  # NCHW: the loops take it channels-last
    torch.testing.assert_close(kernels.input_transform(x, 3, 5), winograd._input_tiles(x, 3, 5), rtol=1e-5, atol=1e-4)
    products = torch.randn(2, 36 * 7, 3, 5).contiguous(memory_format=torch.channels_last)
    out = torch.empty(2, 7, 11, 18, memory_format=torch.channels_last)
    kernels.output_transform(products, out, relu=False)
    expected = winograd._output_tiles(products, 3, 5).reshape(2, 12, 20, 7)[:, :11, :18].permute(0, 3, 1, 2)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-4)
    weight, bias = winograd_weight(torch.randn(7, 24, 3, 3), torch.randn(7))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with torch.inference_mode():
            torch.testing.assert_close(winograd_conv3x3(x, weight, bias), winograd_conv3x3(x, weight, bias, fused=True),
                                       rtol=0, atol=0)
        import numba
        assert numba.get_num_threads() == 1
        if "NUMBA_THREADING_LAYER" not in os.environ:  # the thread-safe layer this package selects
            assert numba.threading_layer() == "omp"
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("fused", TRANSFORMS)
def test_batch_runs_as_one_tall_map_and_channel_slices_are_read(monkeypatch: pytest.MonkeyPatch, fused):
    """The GEMMs see the batch's tiles as one (1, 36 C, N th, tw) map (oneDNN ran that 1.1-2.9x
    faster than N small maps), and the results still land in the right image; a channel slice of
    a channels-last map (Res2Net's first split) is taken as it is."""
    gemm_inputs = []

    def spy(x, *args, **kwargs):
        gemm_inputs.append(tuple(x.shape))
        return inference.onednn_conv_pointwise(x, *args, **kwargs)

    monkeypatch.setattr(winograd, "onednn_conv_pointwise", spy)
    source = torch.randn(3, 40, 10, 13).contiguous(memory_format=torch.channels_last)
    x = source[:, 8:24]  # strided: 16 of 40 channels
    w, b = torch.randn(12, 16, 3, 3) / 4, torch.randn(12)
    with torch.inference_mode():
        got = winograd_conv3x3(x, *winograd_weight(w, b, input_shape=x.shape), relu=True, fused=fused)
    assert gemm_inputs == [(1, 36 * 16, 3 * 3, 4)]
    assert_close_rel(got.double(), _reference(x, w, b, True), rtol=RTOL, what="tall map")


def test_fused_needs_numba(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(winograd, "fused_transforms", lambda: None)
    w = torch.randn(4, 4, 3, 3)
    weight, bias = winograd_weight(w, None)
    x = torch.randn(1, 4, 8, 8)
    with pytest.raises(RuntimeError, match="Numba"):
        winograd_conv3x3(x, weight, bias, fused=True)
    with torch.inference_mode():  # the default falls back to the PyTorch ops: the convolution still
        got = winograd_conv3x3(x, weight, bias)
    assert_close_rel(got.double(), _reference(x, w, None, False), rtol=RTOL, what="fallback")


def test_prepacked_weight_runs_any_input_shape():
    """``input_shape`` gives the weight in oneDNN's blocked layout (no reorder per call); inputs of
    that shape and of others get the plain weight's outputs."""
    w, b = torch.randn(16, 8, 3, 3) / 3, torch.randn(16)
    plain = winograd_weight(w, b)
    packed = winograd_weight(w, b, input_shape=(2, 8, 16, 20))
    if hasattr(torch.ops.mkldnn, "_reorder_convolution_weight"):
        assert packed[0].is_mkldnn and not plain[0].is_mkldnn
    for shape in [(2, 8, 16, 20), (1, 8, 9, 13)]:
        x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            torch.testing.assert_close(winograd_conv3x3(x, *packed, relu=True), winograd_conv3x3(x, *plain, relu=True))


@pytest.mark.parametrize("capability", ["AVX512", "AVX2", "DEFAULT"])
def test_pays_only_where_measured(monkeypatch: pytest.MonkeyPatch, capability: str):
    """Decided by the CPU kind at run time, with the fused transforms, per image: from 48 channels;
    with AVX2 from 4 tiles per image; otherwise from 16, and under 128 channels up to 64."""
    monkeypatch.setattr(winograd, "_cpu_capability", lambda: capability)
    monkeypatch.setattr(winograd, "fused_transforms", lambda: object())
    avx2 = capability == "AVX2"
    assert winograd_pays(torch.empty(1, 256, 200, 200), 256, 256)
    assert winograd_pays(torch.empty(8, 128, 28, 28), 128, 128)  # ResNet-50 layer2 at 224 px: 49 tiles
    assert winograd_pays(torch.empty(8, 256, 14, 14), 256, 256)  # layer3: 16 tiles
    assert winograd_pays(torch.empty(8, 52, 28, 28), 52, 104)  # a Res2Net split: narrow, 49 tiles
    assert winograd_pays(torch.empty(8, 104, 14, 14), 104, 104)
    assert winograd_pays(torch.empty(8, 512, 7, 7), 512, 512) == avx2  # 4 tiles
    assert winograd_pays(torch.empty(1, 64, 56, 56), 64, 64) == avx2  # narrow, 196 tiles
    assert winograd_pays(torch.empty(1, 64, 200, 200), 64, 64) == avx2
    assert winograd_pays(torch.empty(1, 128, 200, 200), 128, 128)  # wide: no upper limit
    assert not winograd_pays(torch.empty(1, 512, 4, 4), 512, 512)  # 1 tile
    assert not winograd_pays(torch.empty(8, 32, 56, 56), 32, 32)  # too few channels on every kind
    assert not winograd_pays(torch.empty(8, 26, 56, 56), 26, 26)


@pytest.mark.parametrize("capability", ["AVX512", "AVX2"])
def test_batch_size_plays_no_part(monkeypatch: pytest.MonkeyPatch, capability: str, calls):
    """Whether a layer takes Winograd depends on the image size, never on the batch: an image gets
    bit-identical outputs alone and in a batch (``tools/predict.py --batch-size`` relies on it)."""
    monkeypatch.setattr(winograd, "_cpu_capability", lambda: capability)
    for channels, size in [(256, 14), (512, 7), (64, 56), (52, 28), (128, 8)]:
        decisions = {winograd_pays(torch.empty(n, channels, size, size), channels, channels) for n in (1, 2, 8, 32)}
        assert len(decisions) == 1, (channels, size)
    conv = FusedConv2d(64, 64, 3, padding=1, relu=True)
    optimize_for_inference(nn.Sequential(conv))
    x = torch.randn(4, 64, 14, 14).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        batched, alone = conv(x), conv(x[1:2].contiguous(memory_format=torch.channels_last))
    assert torch.equal(batched[1:2], alone)
    if winograd.fused_transforms() is not None:  # both ran as Winograd convolutions (16 tiles, 64 channels)
        assert calls == [(4, 64, 14, 14), (1, 64, 14, 14)]


@pytest.mark.parametrize("capability", ["AVX512", "AVX2", "DEFAULT"])
def test_pays_later_without_numba(monkeypatch: pytest.MonkeyPatch, capability: str):
    """The PyTorch-op transforms are slower: with AVX2 from 128 channels, otherwise from 256, and
    100 tiles per image."""
    monkeypatch.setattr(winograd, "_cpu_capability", lambda: capability)
    monkeypatch.setattr(winograd, "fused_transforms", lambda: None)
    big = torch.empty(1, 256, 200, 200)
    assert winograd_pays(big, 256, 256)
    assert winograd_pays(big, 128, 256) == (capability == "AVX2")
    assert not winograd_pays(big, 64, 256)
    assert winograd_pays(torch.empty(1, 256, 50, 50), 256, 256)  # 169 tiles
    assert not winograd_pays(torch.empty(8, 256, 28, 28), 256, 256)  # 49 tiles per image


def test_thresholds_follow_the_running_cpu():
    table = winograd.THRESHOLDS if winograd.fused_transforms() is not None else winograd.TORCH_OP_THRESHOLDS
    expected = table.get(torch.backends.cpu.get_cpu_capability(), table["AVX512"])
    assert winograd.thresholds() == expected


@pytest.fixture
def small_layers_pay(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let the Winograd path run on the tests' small layers (8+ channels, any size)."""
    for name in ("THRESHOLDS", "TORCH_OP_THRESHOLDS"):
        monkeypatch.setattr(winograd, name, {kind: winograd.WinogradRange(8, 1) for kind in ("AVX512", "AVX2")})


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """The input shapes of every Winograd convolution run from now on."""
    seen: list[tuple[int, ...]] = []

    def spy(x, *args, **kwargs):
        seen.append(tuple(x.shape))
        return winograd_conv3x3(x, *args, **kwargs)

    monkeypatch.setattr(inference, "winograd_conv3x3", spy)
    return seen


def test_fused_conv_takes_it_where_it_pays(small_layers_pay, calls):
    convs = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                          nn.Conv2d(8, 4, 3, padding=1)).eval()
    ref = copy.deepcopy(convs)
    fast = optimize_for_inference(convs)
    # stride 2 keeps the direct convolution; 4 output channels are too few for Winograd to pay
    assert [m.winograd for m in fast if isinstance(m, FusedConv2d)] == [True, False, True]
    x = torch.randn(2, 8, 12, 16)
    with torch.inference_mode():
        assert_close_rel(fast(x), ref(x), rtol=RTOL, what="sequential")
    assert calls == [(2, 8, 12, 16)]
    assert fast[0]._winograd[1][0].is_mkldnn or not hasattr(torch.ops.mkldnn, "_reorder_convolution_weight")
    with torch.no_grad():
        fast[0].weight.mul_(-1)
        ref[0].weight.mul_(-1)
    with torch.inference_mode():
        assert_close_rel(fast(x), ref(x), rtol=RTOL, what="after an in-place weight change")
    assert copy.deepcopy(fast[0])._winograd is None


def test_winograd_false_keeps_the_direct_convolution(small_layers_pay, calls):
    conv = nn.Conv2d(8, 8, 3, padding=1).eval()
    fast = optimize_for_inference(nn.Sequential(copy.deepcopy(conv)), winograd=False)
    x = torch.randn(1, 8, 16, 16)
    with torch.inference_mode():
        assert_close_rel(fast(x), conv(x), rtol=1e-5, what="direct")
    assert calls == [] and not fast[0].winograd


def test_not_in_bf16_or_with_autograd(small_layers_pay, calls):
    conv = FusedConv2d.from_conv(nn.Conv2d(8, 8, 3, padding=1))
    conv.winograd = True
    x = torch.randn(1, 8, 16, 16, requires_grad=True)
    conv(x).sum().backward()  # autograd: F.conv2d
    with torch.inference_mode():
        conv.to(torch.bfloat16)(x.detach().bfloat16())
    assert calls == []


def test_detector_same_detections_with_winograd(small_layers_pay, calls):
    """The FPN and RPN 3x3 convolutions run as Winograd convolutions: same detections."""
    detector = heads.build_detector(
        "faster_rcnn", backbone="resnet18", num_classes=5, min_size=128, max_size=128,
        backbone_options={"norm": "FrozenBN"}, box_score_thresh=0.0,
    ).eval()
    fast = heads.optimize_for_inference(copy.deepcopy(detector))
    assert fast.rpn.head.conv[0][0].winograd and fast.backbone.fpn.layer_blocks[0][0].winograd
    images = [torch.rand(3, 128, 128)]
    with torch.inference_mode():
        expected, got = detector(images), fast(images)
    assert len(calls) >= 10  # 5 FPN levels' output convs and the RPN conv on each level
    assert len(expected[0]["boxes"]) > 0
    torch.testing.assert_close(got[0]["boxes"], expected[0]["boxes"], rtol=0, atol=1e-2)
    torch.testing.assert_close(got[0]["scores"], expected[0]["scores"], rtol=0, atol=1e-3)
