"""``optimize_for_inference``: folded and fused models compute what the originals compute."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

import heads
from backbones import (
    TAPS,
    FusedConv2d,
    FusedStage,
    OneDnnLinear,
    create_backbone,
    create_fpn_backbone,
    fold_batch_norms,
    optimize_for_inference,
)
from backbones.compat import has_onednn_pointwise, onednn_bf16_supported
from backbones.blocks import ResidualBlock
from heads import build_detector, build_segmenter
from tests.helpers import assert_close_rel, assert_outputs_close_rel, randomize_norms_

FOLDABLE = (nn.BatchNorm2d, FrozenBatchNorm2d)


def _optimized_pair(model: nn.Module, optimize=optimize_for_inference) -> tuple[nn.Module, nn.Module]:
    model = randomize_norms_(model).eval()
    return model, optimize(copy.deepcopy(model))


@pytest.mark.parametrize(
    "name, options",
    [
        ("resnet18", {}),  # basic blocks
        ("resnet50", {"norm": "FrozenBN"}),  # bottleneck, FrozenBN folded too
        ("resnext50_32x4d", {"output_stride": 16}),  # grouped, dilated
        ("resnet50d", {}),  # deep stem + avg-pool shortcut
        ("res2net50_26w_4s", {}),  # Res2Net
        ("res2next50", {"output_stride": 8}),  # grouped Res2Net, dilated first blocks
        ("res2net50_48w_2s", {"norm": "FrozenBN"}),
    ],
)
def test_backbone_families_unchanged(name: str, options: dict):
    ref, fast = _optimized_pair(create_backbone(name, out_features=TAPS, **options))
    assert not any(isinstance(m, FOLDABLE) for m in fast.modules()), "a batch norm was left unfolded"
    blocks = [m for m in fast.modules() if isinstance(m, ResidualBlock)]
    assert blocks and all(b.fused for b in blocks)
    assert not any(type(m) is nn.Conv2d for m in fast.modules()), "a conv was left unfused"
    x = torch.randn(2, 3, 64, 80)
    with torch.inference_mode():
        expected, got = ref(x), fast(x)
    assert list(got) == list(expected)
    for tap in expected:
        assert got[tap].is_contiguous(memory_format=torch.channels_last), f"{tap} is not channels-last"
        assert_close_rel(got[tap], expected[tap], rtol=1e-5, what=f"{name} {tap}")


@pytest.mark.parametrize("options", [{"norm": "GN"}, {"dcn_stages": (3, 4)}])
def test_unfoldable_layers_are_left_alone(options: dict):
    ref, fast = _optimized_pair(create_backbone("resnet50", out_features=("c3", "c5"), **options))
    if "norm" in options:
        assert sum(isinstance(m, nn.GroupNorm) for m in fast.modules()) == sum(
            isinstance(m, nn.GroupNorm) for m in ref.modules()
        )
    else:
        assert not fast.layer4[0].fused and fast.layer2[0].fused
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected, got = ref(x), fast(x)
    for tap in expected:
        assert_close_rel(got[tap], expected[tap], rtol=1e-5, what=tap)


def test_fpn_backbone_unchanged():
    ref, fast = _optimized_pair(create_fpn_backbone("resnet50", fpn_norm="BN"))
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        assert_outputs_close_rel(fast(x), ref(x), rtol=1e-5, what="FPN")


def test_detector_same_detections():
    detector = build_detector(
        "faster_rcnn", backbone="resnet18", num_classes=5, min_size=160, max_size=160,
        backbone_options={"norm": "FrozenBN"}, box_score_thresh=0.0,
    )
    ref, fast = _optimized_pair(detector, heads.optimize_for_inference)
    # the inference path was taken: fused trunk convs, the RoI-align as a gather
    assert isinstance(fast.backbone.body.layer1[0].conv1, FusedConv2d)
    assert isinstance(fast.roi_heads.box_roi_pool, heads.GatherMultiScaleRoIAlign)
    assert type(ref.roi_heads.box_roi_pool).__name__ == "MultiScaleRoIAlign"
    assert type(fast.roi_heads.box_head.fc6) is OneDnnLinear and type(fast.backbone.body.layer2) is FusedStage
    assert type(fast.roi_heads.box_head) is heads.ChannelsLastTwoMLPHead
    images = [torch.rand(3, 160, 128), torch.rand(3, 144, 160)]
    with torch.inference_mode():
        expected, got = ref(images), fast(images)
    for e, g in zip(expected, got):
        assert len(e["boxes"]) > 0
        torch.testing.assert_close(g["boxes"], e["boxes"], rtol=0, atol=1e-3)
        torch.testing.assert_close(g["scores"], e["scores"], rtol=0, atol=1e-4)
        assert torch.equal(g["labels"], e["labels"])


@pytest.mark.parametrize("sampling_ratio, aligned", [(2, False), (1, True), (3, False)])
def test_gather_roi_align_matches_torchvision(sampling_ratio: int, aligned: bool):
    from torchvision.ops import roi_align

    from heads.inference import roi_align_gather

    features = torch.randn(2, 16, 20, 24).contiguous(memory_format=torch.channels_last)
    corner = torch.rand(40, 2) * 120 - 10
    size = torch.rand(40, 2) * 60
    size[:4] = 0.2  # smaller than a pixel
    rois = torch.cat([torch.randint(0, 2, (40, 1)).float(), corner, corner + size], dim=1)
    rois[-1, 1:] = torch.tensor([150.0, 150.0, 170.0, 160.0])  # outside the map
    expected = roi_align(features, rois, (7, 7), 0.125, sampling_ratio, aligned)
    got = roi_align_gather(features, rois, (7, 7), 0.125, sampling_ratio, aligned)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_multiscale_pooler_swapped_and_equal():
    from torchvision.ops import MultiScaleRoIAlign

    from heads.inference import GatherMultiScaleRoIAlign

    pool = MultiScaleRoIAlign(["p2", "p3", "p4"], 7, 2)
    holder = nn.ModuleDict({"pool": pool})
    heads.optimize_for_inference(holder)
    assert isinstance(holder["pool"], GatherMultiScaleRoIAlign)
    feats = {f"p{i}": torch.randn(2, 8, 128 // 2**i, 96 // 2**i) for i in (2, 3, 4)}
    corner = torch.rand(2, 30, 2) * 60
    boxes = [torch.cat([c, c + 4 + torch.rand(30, 2) * 60], dim=1) for c in corner]
    shapes = [(128, 96), (120, 90)]
    with torch.no_grad():
        torch.testing.assert_close(holder["pool"](feats, boxes, shapes), pool(feats, boxes, shapes), rtol=1e-5, atol=1e-5)


def test_gather_pooler_trains_like_torchvision():
    """In training the gather RoI-align gives torchvision's outputs and feature gradients; under
    bf16 autocast it samples in float32 (as torchvision's autocast rule) and returns bf16."""
    from torchvision.ops import MultiScaleRoIAlign

    from heads.inference import GatherMultiScaleRoIAlign, use_gather_roi_align

    pool = MultiScaleRoIAlign(["p2", "p3", "p4"], 7, 2)
    holder = nn.ModuleDict({"pool": MultiScaleRoIAlign(["p2", "p3", "p4"], 7, 2)})
    assert use_gather_roi_align(holder) == 1 and isinstance(holder["pool"], GatherMultiScaleRoIAlign)
    corner = torch.rand(2, 30, 2) * 60
    boxes = [torch.cat([c, c + 2 + torch.rand(30, 2) * 60], dim=1) for c in corner]
    shapes = [(128, 96), (120, 90)]
    upstream = torch.randn(60, 8, 7, 7)

    def run(module, dtype=None):
        feats = {f"p{i}": torch.randn(2, 8, 128 // 2**i, 96 // 2**i, generator=torch.Generator().manual_seed(i),
                                      requires_grad=True) for i in (2, 3, 4)}
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
            inputs = {k: v.to(dtype) if dtype else v for k, v in feats.items()}
            out = module(inputs, boxes, shapes)
        (out.float() * upstream).sum().backward()
        # a level no RoI maps to gets no gradient (None here, zeros from torchvision)
        return out, [torch.zeros_like(v) if v.grad is None else v.grad for _, v in sorted(feats.items())]

    expected, expected_grads = run(pool)
    got, got_grads = run(holder["pool"])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for g, e in zip(got_grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
    expected_bf16, _ = run(pool, torch.bfloat16)
    got_bf16, got_bf16_grads = run(holder["pool"], torch.bfloat16)
    assert got_bf16.dtype == expected_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(got_bf16.float(), expected_bf16.float(), rtol=1e-2, atol=1e-2)
    assert all(torch.isfinite(g).all() for g in got_bf16_grads) and sum(g.abs().sum() for g in got_bf16_grads) > 0


def test_segmenter_unchanged():
    ref, fast = _optimized_pair(build_segmenter("deeplabv3plus", backbone="resnet18", num_classes=3, aux=True))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected, got = ref(x), fast(x)
    for key in ("out", "aux"):
        assert_close_rel(got[key], expected[key], rtol=1e-5, what=key)


# bf16 rounds to 8 bits of mantissa: through a 50-layer trunk the outputs move by ~1% of their scale
BF16_RTOL = 3e-2


def _count_onednn_dtypes(monkeypatch: pytest.MonkeyPatch) -> list[torch.dtype]:
    """The input dtype of every oneDNN convolution the fused layers run from now on."""
    import backbones.inference as inference

    seen: list[torch.dtype] = []
    real = inference.onednn_conv_pointwise

    def counting(x, *args, **kwargs):
        seen.append(x.dtype)
        return real(x, *args, **kwargs)

    monkeypatch.setattr(inference, "onednn_conv_pointwise", counting)
    return seen


@pytest.mark.skipif(not has_onednn_pointwise(), reason="needs torch's oneDNN convolution op")
def test_bf16_trunk_behind_an_fp32_interface(monkeypatch: pytest.MonkeyPatch):
    ref, fast = _optimized_pair(create_backbone("resnet50", out_features=("c3", "c5")),
                                lambda m: optimize_for_inference(m, dtype=torch.bfloat16))
    assert fast.layer1[0].conv1.weight.dtype == torch.bfloat16
    seen = _count_onednn_dtypes(monkeypatch)
    x = torch.randn(2, 3, 96, 96)
    with torch.inference_mode():
        expected, got = ref(x), fast(x)
    if onednn_bf16_supported():
        assert seen and set(seen) == {torch.bfloat16}  # every conv ran oneDNN's bf16 kernels
    else:
        assert seen == []  # an AVX2-only CPU: oneDNN refuses bf16, every conv ran F.conv2d
    for tap in expected:
        assert got[tap].dtype == torch.float32
        assert_close_rel(got[tap], expected[tap], rtol=BF16_RTOL, what=f"bf16 {tap}")
        with pytest.raises(AssertionError):  # not fp32 either: the check above can tell
            assert_close_rel(got[tap], expected[tap], rtol=1e-5, what=f"bf16 {tap}")


def test_bf16_detector_keeps_its_heads_in_fp32():
    detector = build_detector("faster_rcnn", backbone="resnet18", num_classes=5, min_size=128, max_size=128,
                              box_score_thresh=0.0)
    ref, fast = _optimized_pair(detector, lambda m: heads.optimize_for_inference(m, dtype=torch.bfloat16))
    assert fast.backbone.body.conv1.weight.dtype == torch.bfloat16
    assert fast.backbone.fpn.layer_blocks[0][0].weight.dtype == torch.bfloat16
    assert {p.dtype for p in fast.rpn.parameters()} | {p.dtype for p in fast.roi_heads.parameters()} == {torch.float32}
    images = [torch.rand(3, 128, 112)]
    with torch.inference_mode():
        batch, _ = ref.transform(images)
        features, expected = fast.backbone(batch.tensors), ref.backbone(batch.tensors)
        detections = fast(images)
    for level in expected:
        assert features[level].dtype == torch.float32
        assert_close_rel(features[level], expected[level], rtol=BF16_RTOL, what=f"bf16 FPN {level}")
    assert detections[0]["boxes"].dtype == torch.float32 and len(detections[0]["boxes"]) > 0


def test_bf16_segmenter_and_bad_dtypes():
    ref, fast = _optimized_pair(build_segmenter("deeplabv3", backbone="resnet18", num_classes=3),
                                lambda m: heads.optimize_for_inference(m, dtype=torch.bfloat16))
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        expected, got = ref(x)["out"], fast(x)["out"]
    assert got.dtype == torch.float32
    assert_close_rel(got, expected, rtol=BF16_RTOL, what="bf16 logits")
    for optimize in (optimize_for_inference, heads.optimize_for_inference):
        with pytest.raises(ValueError, match="dtype must be torch.float32 or torch.bfloat16"):
            optimize(create_backbone("resnet18"), dtype=torch.float16)


def test_folded_state_dict_and_flags():
    model = create_backbone("resnet18", out_features=("c2",))
    keys = set(model.state_dict())
    fast = optimize_for_inference(model)
    assert fast is model and not fast.training
    assert not any(p.requires_grad for p in fast.parameters())
    new_keys = set(fast.state_dict())
    assert "bn1.weight" in keys and not any(".bn" in k or k.startswith("bn") for k in new_keys)
    assert "conv1.bias" in new_keys and "layer1.0.conv2.bias" in new_keys
    assert fast.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_copy_leaves_the_original_alone():
    model = create_backbone("resnet18", out_features=("c2",)).train()
    fast = optimize_for_inference(model, inplace=False)
    assert fast is not model and model.training and isinstance(model.bn1, nn.BatchNorm2d)
    assert all(p.requires_grad for p in model.parameters()) and isinstance(fast.bn1, nn.Identity)


def test_fused_conv_autograd_fallback():
    conv = nn.Conv2d(4, 6, 3, padding=1)
    fused = FusedConv2d.from_conv(conv, relu=True)
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    skip = torch.randn(2, 6, 8, 8)
    fused(x, skip).sum().backward()
    grad = x.grad.clone()
    x.grad = None
    torch.relu(conv(x) + skip).sum().backward()
    torch.testing.assert_close(grad, x.grad)
    with torch.no_grad():
        torch.testing.assert_close(fused(x, skip), torch.relu(conv(x) + skip), rtol=1e-5, atol=1e-5)


def _relu_conv_plus(conv: nn.Conv2d, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    return torch.relu(conv(x) + skip)


@pytest.mark.skipif(not has_onednn_pointwise(), reason="needs torch's oneDNN convolution op")
def test_fused_conv_accumulates_into_the_residual_it_is_given():
    conv = nn.Conv2d(8, 16, 1)
    fused = FusedConv2d.from_conv(conv, relu=True).eval()
    x = torch.randn(2, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        skip = torch.randn(2, 16, 6, 6).contiguous(memory_format=torch.channels_last)
        expected = _relu_conv_plus(conv, x, skip)
        kept = skip.clone()
        out = fused(x, kept)  # not asked: a new tensor, the residual untouched
        assert out.data_ptr() != kept.data_ptr() and torch.equal(kept, skip)
        out = fused(x, kept, accumulate=True)
        assert out.data_ptr() == kept.data_ptr()  # written into the residual
        assert_close_rel(out, expected, rtol=1e-5, what="accumulated")
        view = torch.randn(2, 32, 6, 6).contiguous(memory_format=torch.channels_last)[:, :16]
        before = view.clone()
        out = fused(x, view, accumulate=True)  # a view of another tensor is never written into
        assert torch.equal(view, before)
        assert_close_rel(out, _relu_conv_plus(conv, x, before), rtol=1e-5, what="view residual")


@pytest.mark.skipif(not has_onednn_pointwise(), reason="needs torch's oneDNN convolution op")
def test_stage_blocks_write_into_their_input_unless_a_hook_may_keep_it():
    ref, fast = _optimized_pair(create_backbone("resnet50", out_features=("c3",)))
    stage = fast.layer1
    assert type(stage) is FusedStage and type(fast.layer2) is FusedStage
    x = torch.randn(2, 64, 16, 16).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        first = stage[0](x)
        second = stage[1](first, owns_input=True)
        assert second.data_ptr() == first.data_ptr()  # the first block's output became the second's
        kept = {}
        handle = stage[0].register_forward_hook(lambda m, i, o: kept.setdefault("out", o))
        out = stage(x)
        handle.remove()
        assert_close_rel(kept["out"], ref.layer1[0](x), rtol=1e-5, what="hooked block output, left intact")
        assert_close_rel(out, ref.layer1(x), rtol=1e-5, what="stage output")
    assert set(fast.state_dict()) >= {"layer1.0.conv1.weight", "layer1.2.conv3.bias"}


@pytest.mark.skipif(not has_onednn_pointwise(), reason="needs torch's oneDNN convolution op")
def test_packed_weight_follows_the_weight():
    conv = nn.Conv2d(8, 16, 3, padding=1)
    fused = FusedConv2d.from_conv(conv).eval()
    x = torch.randn(2, 8, 10, 10).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        assert_close_rel(fused(x), conv(x), rtol=1e-5, what="first call")
        packed = fused._packed[1]
        assert packed.is_mkldnn and fused(x) is not None and fused._packed[1] is packed  # packed once
        conv.weight.mul_(-2.0)  # shared weight changed in place: repacked
        assert_close_rel(fused(x), conv(x), rtol=1e-5, what="after an in-place change")
    conv.weight = nn.Parameter(torch.randn_like(conv.weight))
    fused.weight = conv.weight  # replaced: repacked
    with torch.inference_mode():
        assert_close_rel(fused(x), conv(x), rtol=1e-5, what="after a new weight")
        copied = copy.deepcopy(fused)
        assert copied._packed is None and fused._packed is not None
        assert_close_rel(copied(x), conv(x), rtol=1e-5, what="a copy")
        other = torch.randn(1, 8, 7, 5)  # another input shape than the one packed for
        assert_close_rel(fused(other), conv(other), rtol=1e-5, what="another input shape")


def test_linear_layers_run_as_onednn_inner_products():
    linear = nn.Linear(48, 20)
    fast = OneDnnLinear.from_linear(linear)
    assert fast.weight is linear.weight and set(fast.state_dict()) == set(linear.state_dict())
    x = torch.randn(7, 48, requires_grad=True)
    with torch.inference_mode():
        assert_close_rel(fast(x), linear(x), rtol=1e-5, what="oneDNN inner product")
    fast(x).sum().backward()  # with autograd: F.linear
    grad, x.grad = x.grad.clone(), None
    linear(x).sum().backward()
    torch.testing.assert_close(grad, x.grad)
    head = optimize_for_inference(nn.Sequential(nn.Flatten(), nn.Linear(12, 4)))
    assert type(head[1]) is OneDnnLinear


def test_linear_weight_override():
    fast = OneDnnLinear.from_linear(nn.Linear(48, 20))
    other = torch.randn(20, 48)
    x = torch.randn(7, 48)
    with torch.inference_mode():
        assert_close_rel(fast(x, other), x @ other.T + fast.bias, rtol=1e-5, what="overridden weight")
    assert_close_rel(fast(x.requires_grad_(), other), x @ other.T + fast.bias, rtol=1e-5, what="autograd path")


@pytest.mark.parametrize("fuse", [True, False])
def test_channels_last_box_head_equals_torchvisions(fuse: bool):
    """The box head takes channels-last RoI features as they are, with fc6's weight permuted to
    their (h, w, c) order once: same outputs as torchvision's head, same state_dict, and a change
    to the weight is followed."""
    from torchvision.models.detection.faster_rcnn import TwoMLPHead

    ref = TwoMLPHead(16 * 7 * 7, 32).eval()
    head = heads.optimize_for_inference(nn.ModuleDict({"box_head": copy.deepcopy(ref)}), fuse=fuse)["box_head"]
    assert type(head) is heads.ChannelsLastTwoMLPHead
    assert {k: v for k, v in head.state_dict().items()}.keys() == ref.state_dict().keys()
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in head.state_dict().items())
    rois = torch.randn(30, 16, 7, 7)
    channels_last = rois.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert_close_rel(head(rois), ref(rois), rtol=1e-5, what="NCHW input (torchvision's path)")
        assert head.__dict__.get("_hwc_weight") is None, "NCHW input took the permuted path"
        assert_close_rel(head(channels_last), ref(rois), rtol=1e-5, what="channels-last input")
        assert head._hwc_weight is not None, "channels-last input took torchvision's path"
        head.fc6.weight.mul_(2)
        ref.fc6.weight.mul_(2)
        assert_close_rel(head(channels_last), ref(rois), rtol=1e-5, what="after an in-place weight change")
    assert copy.deepcopy(head)._hwc_weight is None


def test_bad_input():
    with pytest.raises(TypeError, match="nn.Module"):
        optimize_for_inference("resnet50")
    with pytest.raises(ValueError, match="eval mode"):
        fold_batch_norms(create_backbone("resnet18", out_features=("stem",)).train())
    with pytest.raises(ValueError, match="fuse=True needs fold=True"):  # was a silent no-op fusion
        optimize_for_inference(create_backbone("resnet18", out_features=("c2",)), fold=False)
    plain = optimize_for_inference(create_backbone("resnet18", out_features=("c2",)), fold=False, fuse=False)
    assert isinstance(plain.bn1, nn.BatchNorm2d) and not plain.training


def test_detectors_go_through_heads():
    """``backbones.optimize_for_inference`` cannot speed up a detector's RoI-align (that lives in
    ``heads``, which backbones does not import): it refuses detectors and names the entry point."""
    from torchvision.ops import MultiScaleRoIAlign

    detector = build_detector("retinanet", backbone="resnet18", num_classes=3)
    with pytest.raises(TypeError, match=r"heads\.optimize_for_inference"):
        optimize_for_inference(detector)
    with pytest.raises(TypeError, match=r"heads\.optimize_for_inference"):
        optimize_for_inference(nn.ModuleDict({"pool": MultiScaleRoIAlign(["p2"], 7, 2)}))
    with pytest.raises(ValueError, match="fuse=True needs fold=True"):
        heads.optimize_for_inference(detector, fold=False)
    plain = heads.optimize_for_inference(detector, fold=False, fuse=False, fast_roi_align=False)
    assert isinstance(plain.backbone.body.bn1, nn.BatchNorm2d) and not plain.training
    two_stage = build_detector("faster_rcnn", backbone="resnet18", num_classes=3)
    kept = heads.optimize_for_inference(two_stage, inplace=False, fast_roi_align=False).roi_heads.box_roi_pool
    swapped = heads.optimize_for_inference(two_stage, inplace=False).roi_heads.box_roi_pool
    assert type(kept) is MultiScaleRoIAlign and isinstance(swapped, heads.GatherMultiScaleRoIAlign)


def test_unrequested_stages_cost_nothing():
    """Stages deeper than the deepest requested tap are neither built nor run."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.empty(1, 3, 224, 224, device="meta")
    macs = {}
    for taps in (("stem",), ("c3",), ("c2", "c5")):
        model = create_backbone("resnet50", out_features=taps).to("meta")
        with FlopCounterMode(display=False) as counter:
            model(x)
        macs[taps] = counter.get_total_flops()
        built = {name for name, _ in model.named_children()}
        deepest = max(("stem", "c2", "c3", "c4", "c5").index(t) for t in taps)
        assert built >= {f"layer{i}" for i in range(1, deepest + 1)}
        assert not built & {f"layer{i}" for i in range(deepest + 1, 5)}
    assert macs[("stem",)] < 0.1 * macs[("c3",)] < macs[("c2", "c5")]
