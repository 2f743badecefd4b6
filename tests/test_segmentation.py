"""DeepLabV3 / DeepLabV3+ segmenters: torchvision parity, output sizes on several trunks, training
with a batch of one, the training loss and its gradients, and clear errors on bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models.segmentation import deeplabv3_resnet50
from torchvision.models.segmentation.deeplabv3 import ASPP as TorchvisionASPP

import heads
from backbones import create_backbone, load_matching
from heads.segmentation import ASPP, FallbackBatchNorm2d, build_segmenter, segmentation_loss

from .helpers import assert_close_rel, randomize_norms_


@pytest.fixture(scope="module")
def torchvision_deeplab() -> nn.Module:
    """torchvision's DeepLabV3-ResNet50 (output stride 8, aux head) with random weights and BN."""
    torch.manual_seed(0)
    ref = deeplabv3_resnet50(weights=None, weights_backbone=None, aux_loss=True, num_classes=21)
    return randomize_norms_(ref, seed=1)


# ------------------------------------------------------------------------------------------ parity
def test_torchvision_deeplabv3_resnet50_loads_and_matches_in_eval(torchvision_deeplab):
    ref = torchvision_deeplab.eval()
    ours = build_segmenter("deeplabv3", backbone="resnet50", num_classes=21, output_stride=8, aux=True).eval()
    report = heads.load_torchvision_weights(ours, ref.state_dict())
    assert report.ok and not report.ignored, str(report)
    x = torch.randn(2, 3, 65, 97)
    with torch.no_grad():
        expected, got = ref(x), ours(x)
    assert list(got) == ["out", "aux"]
    for key in ("out", "aux"):
        assert got[key].shape == (2, 21, 65, 97)
        assert_close_rel(got[key], expected[key], 1e-5, what=key)


def test_training_mode_matches_torchvision_with_two_images(torchvision_deeplab):
    """With more than one value per channel the pooling branch is plain BN: same outputs (same
    dropout masks from the same seed) and the same running-statistics update as torchvision."""
    ref = torchvision_deeplab.train()
    ours = build_segmenter("deeplabv3", backbone="resnet50", num_classes=21, output_stride=8, aux=True)
    load_matching(ours, ours.remap_torchvision_keys(ref.state_dict()))
    ours.train()
    x = torch.randn(2, 3, 33, 41)
    torch.manual_seed(5)
    expected = ref(x)
    torch.manual_seed(5)
    got = ours(x)
    for key in ("out", "aux"):
        assert_close_rel(got[key], expected[key], 1e-5, what=key)
    ref_stats = ref.classifier[0].convs[4][2].running_var
    assert_close_rel(ours.classifier.aspp.convs[4][2].running_var, ref_stats, 1e-5, what="pooling BN running_var")


def test_remap_is_identity_on_own_keys_and_v3plus_reuses_trunk_and_aspp(torchvision_deeplab):
    v3 = build_segmenter("deeplabv3", backbone="resnet50", num_classes=21, output_stride=8)
    own = v3.state_dict()
    assert list(v3.remap_torchvision_keys(own)) == list(own)

    plus = build_segmenter("deeplabv3plus", backbone="resnet50", num_classes=21, output_stride=8, aux=True)
    report = heads.load_torchvision_weights(plus, torchvision_deeplab.state_dict(), strict=False)
    assert not report.mismatched
    assert sorted(report.unexpected) == ["classifier.1.weight", "classifier.2.bias", "classifier.2.running_mean",
                                         "classifier.2.running_var", "classifier.2.weight", "classifier.4.bias",
                                         "classifier.4.weight"]
    assert all(k.startswith(("classifier.low_level.", "classifier.decoder.", "classifier.predict."))
               for k in report.missing)
    assert torch.equal(plus.classifier.aspp.project[0].weight, torchvision_deeplab.classifier[0].project[0].weight)


# --------------------------------------------------------------------------- pooling branch, BN
def test_pooling_branch_trains_with_a_batch_of_one():
    x = torch.randn(1, 32, 5, 7)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        TorchvisionASPP(32, (1, 2, 3), 16).train()(x)  # the problem being fixed
    aspp = ASPP(32, (1, 2, 3), 16).train()
    pooled_bn = aspp.convs[4][2]
    before = pooled_bn.running_mean.clone()
    y = aspp(x)
    y.sum().backward()
    assert y.shape == (1, 16, 5, 7)
    assert aspp.convs[4][1].weight.grad.abs().sum() > 0
    assert torch.equal(pooled_bn.running_mean, before)  # one value: running statistics used, not updated


def test_fallback_bn_is_batchnorm_unless_one_value_per_channel():
    ours, plain = FallbackBatchNorm2d(4), nn.BatchNorm2d(4)
    randomize_norms_(ours), plain.load_state_dict(ours.state_dict())
    x = torch.randn(3, 4, 1, 1)
    assert torch.allclose(ours.train()(x), plain.train()(x))
    assert torch.allclose(ours.running_mean, plain.running_mean)
    one = torch.randn(1, 4, 1, 1)
    assert torch.allclose(ours.train()(one), plain.eval()(one))
    assert isinstance(ours, nn.BatchNorm2d)  # converts and loads like BN


@pytest.mark.parametrize("output_stride, rates", [(16, (6, 12, 18)), (8, (12, 24, 36))])
def test_atrous_rates_follow_output_stride(output_stride, rates):
    model = build_segmenter("deeplabv3", backbone="resnet18", num_classes=3, output_stride=output_stride)
    branches = model.classifier.aspp.convs
    assert tuple(b[0].dilation[0] for b in branches[1:4]) == rates
    assert model.backbone.feature_info[-1].stride == output_stride
    custom = build_segmenter("deeplabv3", backbone="resnet18", num_classes=3, atrous_rates=(2, 4, 6))
    assert tuple(b[0].dilation[0] for b in custom.classifier.aspp.convs[1:4]) == (2, 4, 6)


# ------------------------------------------------------------------------ shapes and a train step
@pytest.mark.parametrize("kind", ["deeplabv3", "deeplabv3plus"])
@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("trunk", ["resnet18", "resnext50_32x4d", "res2net50_26w_4s"])
def test_output_size_and_batch_of_one_training_step(trunk, output_stride, kind):
    model = build_segmenter(kind, backbone=trunk, num_classes=5, output_stride=output_stride, aux=True)
    model.train()
    x = torch.randn(1, 3, 37, 53)
    target = torch.randint(0, 5, (1, 37, 53))
    target[0, :4] = 255
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    outputs = model(x)
    assert {k: tuple(v.shape) for k, v in outputs.items()} == {"out": (1, 5, 37, 53), "aux": (1, 5, 37, 53)}
    losses = segmentation_loss(outputs, target)
    assert torch.isfinite(losses["loss"])
    before = model.classifier.predict.weight.detach().clone()
    opt.zero_grad()
    losses["loss"].backward()
    opt.step()
    assert not torch.equal(model.classifier.predict.weight, before)


@pytest.mark.parametrize("kind, output_stride", [("deeplabv3", 8), ("deeplabv3plus", 16)])
def test_full_size_odd_input_keeps_its_size(kind, output_stride):
    model = build_segmenter(kind, backbone="resnet18", num_classes=21, output_stride=output_stride).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 321, 481))
    assert list(out) == ["out"] and out["out"].shape == (1, 21, 321, 481)


def test_accepts_a_trunk_module_with_extra_taps():
    trunk = create_backbone("resnet18", out_features=("c2", "c3", "c4", "c5"), output_stride=8)
    model = build_segmenter("deeplabv3plus", backbone=trunk, num_classes=2, output_stride=8)
    assert model.backbone is trunk
    assert model.eval()(torch.randn(1, 3, 29, 31))["out"].shape == (1, 2, 29, 31)


# -------------------------------------------------------------------------------------------- loss
def test_loss_is_torchvision_reference_recipe():
    out, aux = torch.randn(2, 4, 6, 7), torch.randn(2, 4, 6, 7)
    target = torch.randint(0, 4, (2, 6, 7))
    target[:, 0] = 255
    losses = segmentation_loss({"out": out, "aux": aux}, target, aux_weight=0.5)
    expected_out = F.cross_entropy(out, target, ignore_index=255)
    expected_aux = F.cross_entropy(aux, target, ignore_index=255)
    torch.testing.assert_close(losses["loss_out"], expected_out)
    torch.testing.assert_close(losses["loss_aux"], expected_aux)
    torch.testing.assert_close(losses["loss"], expected_out + 0.5 * expected_aux)
    alone = segmentation_loss({"out": out}, target)
    assert set(alone) == {"loss_out", "loss"} and torch.equal(alone["loss"], alone["loss_out"])


def test_loss_ignores_ignore_index_pixels():
    out = torch.randn(1, 3, 4, 4, requires_grad=True)
    target = torch.full((1, 4, 4), 255)
    target[0, 0, 0] = 1
    changed = out.detach().clone()
    changed[..., 1:, :] += 10.0  # only ignored pixels differ
    assert torch.equal(segmentation_loss({"out": out}, target)["loss"], segmentation_loss({"out": changed}, target)["loss"])
    none_labelled = segmentation_loss({"out": out}, torch.full((1, 4, 4), 255))["loss"]
    none_labelled.backward()
    assert none_labelled.item() == 0.0 and torch.isfinite(out.grad).all()
    custom = segmentation_loss({"out": out}, torch.zeros(1, 4, 4, dtype=torch.long), ignore_index=0)["loss"]
    assert custom.item() == 0.0


def test_class_balance_weights_classes_by_inverse_batch_frequency():
    from heads.segmentation.loss import batch_class_weights

    out = torch.randn(2, 4, 6, 6)
    target = torch.zeros(2, 6, 6, dtype=torch.long)
    target[0, :2, :3] = 1  # 6 pixels of class 1, 66 of class 0, none of 2 and 3
    target[1, 0, 0] = 255
    weights = batch_class_weights(target, 4, 255, 1.0)
    assert weights[2] == weights[3] == 0
    counts = torch.tensor([65.0, 6.0])
    torch.testing.assert_close(weights[:2], 71 / (2 * counts))  # each present class: equal total weight
    balanced = segmentation_loss({"out": out}, target, class_balance=1.0)["loss"]
    torch.testing.assert_close(balanced, F.cross_entropy(out, target, weight=weights, ignore_index=255))
    half = segmentation_loss({"out": out}, target, class_balance=0.5)["loss"]
    torch.testing.assert_close(half, F.cross_entropy(out, target, weight=weights.sqrt(), ignore_index=255))
    plain = segmentation_loss({"out": out}, target, class_balance=0.0)["loss"]
    torch.testing.assert_close(plain, F.cross_entropy(out, target, ignore_index=255))
    with pytest.raises(ValueError, match="class_balance"):
        segmentation_loss({"out": out}, target, class_balance=2.0)


def test_gradients_reach_decoder_and_unfrozen_trunk_only():
    model = build_segmenter(
        "deeplabv3plus", backbone="resnet18", num_classes=3, output_stride=16, aux=True, frozen_stages=1
    ).train()
    x, target = torch.randn(2, 3, 33, 35), torch.randint(0, 3, (2, 33, 35))
    segmentation_loss(model(x), target)["loss"].backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    frozen = [n for n in grads if n.startswith(("backbone.conv1.", "backbone.bn1.", "backbone.layer1."))]
    assert frozen and all(grads[n] is None for n in frozen)
    for prefix in ("classifier.decoder.", "classifier.low_level.", "classifier.aspp.", "classifier.predict.",
                   "aux_classifier.", "backbone.layer2.", "backbone.layer3.", "backbone.layer4."):
        names = [n for n in grads if n.startswith(prefix)]
        assert names and all(grads[n] is not None for n in names), prefix
        assert any(grads[n].abs().sum() > 0 for n in names), prefix


def test_loss_rejects_bad_targets():
    out = {"out": torch.randn(1, 3, 4, 4)}
    with pytest.raises(ValueError, match="outside 0..2"):
        segmentation_loss(out, torch.full((1, 4, 4), 7))
    with pytest.raises(ValueError, match="does not fit"):
        segmentation_loss(out, torch.zeros(1, 1, 4, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        segmentation_loss(out, torch.zeros(1, 4, 4))
    with pytest.raises(TypeError, match="'out'"):
        segmentation_loss(torch.randn(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="aux_weight"):
        segmentation_loss(out, torch.zeros(1, 4, 4, dtype=torch.long), aux_weight=-1)


# --------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("output_stride", [32, 4, 12, "16"])
def test_rejects_output_stride_other_than_8_or_16(output_stride):
    with pytest.raises(ValueError, match="output_stride must be 8 or 16"):
        build_segmenter("deeplabv3", backbone="resnet18", num_classes=3, output_stride=output_stride)


@pytest.mark.parametrize("num_classes", [0, -2, 2.5, True, "3"])
def test_rejects_bad_num_classes(num_classes):
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        build_segmenter("deeplabv3", backbone="resnet18", num_classes=num_classes)


def test_v3plus_needs_c2_from_the_trunk():
    trunk = create_backbone("resnet18", out_features=("c3", "c4", "c5"), output_stride=16)
    with pytest.raises(ValueError, match="missing c2"):
        build_segmenter("deeplabv3plus", backbone=trunk, num_classes=3)
    build_segmenter("deeplabv3", backbone=trunk, num_classes=3)  # V3 does not need it
    with pytest.raises(ValueError, match="missing c4"):
        build_segmenter("deeplabv3", backbone=create_backbone("resnet18", out_features=("c5",), output_stride=16),
                        num_classes=3, aux=True)


def test_other_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="kind must be one of"):
        build_segmenter("pspnet", backbone="resnet18", num_classes=3)
    with pytest.raises(ValueError, match="output_stride=8"):
        build_segmenter("deeplabv3", backbone=create_backbone("resnet18", output_stride=16), num_classes=3,
                        output_stride=8)
    with pytest.raises(TypeError, match="feature_info"):
        build_segmenter("deeplabv3", backbone=nn.Conv2d(3, 8, 3), num_classes=3)
    with pytest.raises(ValueError, match="only when backbone is a name"):
        build_segmenter("deeplabv3", backbone=create_backbone("resnet18", output_stride=16), num_classes=3,
                        frozen_stages=1)
    with pytest.raises(ValueError, match="drop out_features"):
        build_segmenter("deeplabv3", backbone="resnet18", num_classes=3, out_features=("c5",))
    with pytest.raises(ValueError, match="unknown option"):
        build_segmenter("deeplabv3", backbone="resnet18", num_classes=3, colour="red")
    with pytest.raises(ValueError, match="atrous_rates"):
        build_segmenter("deeplabv3", backbone="resnet18", num_classes=3, atrous_rates=(0, 6))
    with pytest.raises(ValueError, match="resnet50"):
        build_segmenter("deeplabv3", backbone="resnet5O", num_classes=3)
