"""build_detector and load_torchvision_weights: parity with torchvision's detectors, a training step
on three trunk families, derived anchors/RoI pools, checkpoints, and clear errors on bad input."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from torchvision.models import detection as tvd
from torchvision.models import resnet18
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.retinanet import _default_anchorgen as retinanet_anchors
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign

from backbones import UnknownBackboneError, WeightsMismatchError, create_fpn_backbone
from heads import build_detector, load_torchvision_weights
from tests.helpers import randomize_norms_ as randomize_


def images(n: int = 2, size: int = 160, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, size, size - 16 * i, generator=g) for i in range(n)]


# ------------------------------------------------------------------------------------------ parity
SMALL = dict(min_size=160, max_size=160)
_RCNN_EVAL = dict(box_score_thresh=0.0, rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=100)
_ONE_STAGE_EVAL = dict(score_thresh=0.0, topk_candidates=200, detections_per_img=30)
PARITY = {
    # kind, version: (torchvision builder, options for both, number of images)
    ("faster_rcnn", "v1"): (tvd.fasterrcnn_resnet50_fpn, dict(_RCNN_EVAL, box_detections_per_img=30), 2),
    ("retinanet", "v1"): (tvd.retinanet_resnet50_fpn, _ONE_STAGE_EVAL, 2),
    ("fcos", "v1"): (tvd.fcos_resnet50_fpn, _ONE_STAGE_EVAL, 2),
    ("mask_rcnn", "v1"): (tvd.maskrcnn_resnet50_fpn, dict(_RCNN_EVAL, box_detections_per_img=4), 1),
    ("faster_rcnn", "v2"): (tvd.fasterrcnn_resnet50_fpn_v2, dict(_RCNN_EVAL, box_detections_per_img=30), 1),
    ("retinanet", "v2"): (tvd.retinanet_resnet50_fpn_v2, _ONE_STAGE_EVAL, 1),
}


@pytest.mark.parametrize("kind, version", list(PARITY))
def test_same_detections_as_torchvision(kind, version):
    builder, options, n = PARITY[(kind, version)]
    torch.manual_seed(0)
    reference = randomize_(builder(weights=None, weights_backbone=None, **SMALL, **options)).eval()
    ours = build_detector(kind, backbone="resnet50", num_classes=91, version=version, **SMALL, **options).eval()
    assert type(ours) is type(reference)
    report = load_torchvision_weights(ours, reference.state_dict())
    assert report.ok and report.loaded

    batch = images(n)
    with torch.no_grad():
        expected, got = reference(batch), ours(batch)
    for exp, out in zip(expected, got):
        assert len(exp["boxes"]) > 0, "random weights gave no detections: the comparison would be vacuous"
        assert exp.keys() == out.keys()
        torch.testing.assert_close(out["boxes"], exp["boxes"], rtol=0, atol=1e-4)
        torch.testing.assert_close(out["scores"], exp["scores"], rtol=1e-4, atol=1e-5)
        assert torch.equal(out["labels"], exp["labels"])
        if "masks" in exp:
            torch.testing.assert_close(out["masks"], exp["masks"], rtol=0, atol=1e-4)


def test_default_anchors_and_roi_levels_are_torchvisions():
    rcnn = build_detector("mask_rcnn", backbone="resnet18", num_classes=2, backbone_options={"fpn_channels": 32})
    assert rcnn.rpn.anchor_generator.sizes == ((32,), (64,), (128,), (256,), (512,))
    assert rcnn.rpn.anchor_generator.aspect_ratios == ((0.5, 1.0, 2.0),) * 5
    assert rcnn.roi_heads.box_roi_pool.featmap_names == ["p2", "p3", "p4", "p5"]
    assert rcnn.roi_heads.mask_roi_pool.featmap_names == ["p2", "p3", "p4", "p5"]
    retina = build_detector("retinanet", backbone="resnet18", num_classes=2, backbone_options={"fpn_channels": 32})
    assert retina.anchor_generator.sizes == retinanet_anchors().sizes
    fcos = build_detector("fcos", backbone="resnet18", num_classes=2, backbone_options={"fpn_channels": 32})
    assert fcos.anchor_generator.sizes == ((8,), (16,), (32,), (64,), (128,))
    assert list(fcos.backbone.level_names) == ["p3", "p4", "p5", "p6", "p7"]


def test_anchors_and_roi_levels_follow_a_custom_pyramid():
    pyramid = create_fpn_backbone("resnet18", out_features=("c3", "c4", "c5"), fpn_channels=32)
    model = build_detector("faster_rcnn", backbone=pyramid, num_classes=4, min_size=128, max_size=128).eval()
    assert model.backbone is pyramid
    assert model.rpn.anchor_generator.sizes == ((64,), (128,), (256,), (512,))
    assert model.roi_heads.box_roi_pool.featmap_names == ["p3", "p4", "p5"]
    with torch.no_grad():
        assert model(images(1, 128))[0]["boxes"].shape[-1] == 4


def test_user_anchors_and_pools_that_fit_are_used():
    pool = MultiScaleRoIAlign(["p3", "p4"], 7, 2)
    model = build_detector(
        "faster_rcnn", backbone="resnet18", num_classes=3, backbone_options={"fpn_channels": 32},
        anchor_sizes=(16, 32, 64, 128, 256), aspect_ratios=(1.0, 2.0), box_roi_pool=pool,
    )
    assert model.rpn.anchor_generator.sizes == ((16,), (32,), (64,), (128,), (256,))
    assert model.rpn.head.cls_logits.out_channels == 2
    assert model.roi_heads.box_roi_pool is pool


def test_pretrained_trunk_follows_torchvision_recipe():
    state = resnet18().state_dict()
    model = build_detector("retinanet", backbone="resnet18", num_classes=2, backbone_options={"weights": state, "fpn_channels": 32})
    body = model.backbone.body
    assert isinstance(body.bn1, FrozenBatchNorm2d) and body.frozen_stages == 1
    torch.testing.assert_close(body.layer3[0].conv1.weight, state["layer3.0.conv1.weight"])
    plain = build_detector("retinanet", backbone="resnet18", num_classes=2, backbone_options={"fpn_channels": 32})
    assert isinstance(plain.backbone.body.bn1, nn.BatchNorm2d) and plain.backbone.body.frozen_stages == -1


# ---------------------------------------------------------------------------------- training step
_RCNN_TRAIN = dict(
    rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100, rpn_batch_size_per_image=64,
    box_batch_size_per_image=32,
)
TRAIN_OPTIONS = {"faster_rcnn": _RCNN_TRAIN, "mask_rcnn": _RCNN_TRAIN, "retinanet": {}, "fcos": {}}


def training_targets(size: int, *, masks: bool) -> list[dict[str, torch.Tensor]]:
    boxes = torch.tensor([[10.0, 20.0, 70.0, 90.0], [40.0, 30.0, 120.0, 100.0]])
    full = {"boxes": boxes, "labels": torch.tensor([1, 2])}
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    if masks:
        full["masks"] = torch.zeros(2, size, size, dtype=torch.uint8)
        for i, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
            full["masks"][i, y1:y2, x1:x2] = 1
        empty["masks"] = torch.zeros(0, size, size, dtype=torch.uint8)
    return [full, empty]


@pytest.mark.parametrize("backbone", ["resnet18", "resnext50_32x4d", "res2net50_26w_4s"])
@pytest.mark.parametrize("kind", ["faster_rcnn", "retinanet", "fcos", "mask_rcnn"])
def test_training_step(kind, backbone):
    torch.manual_seed(0)
    size = 128
    model = build_detector(
        kind, backbone=backbone, num_classes=3, backbone_options={"frozen_stages": 1, "fpn_channels": 64},
        min_size=size, max_size=size, **TRAIN_OPTIONS[kind],
    ).train()
    batch = [torch.rand(3, size, size) for _ in range(2)]
    losses = model(batch, training_targets(size, masks=kind == "mask_rcnn"))
    assert losses and all(torch.isfinite(v) for v in losses.values()), losses
    if kind == "mask_rcnn":
        assert "loss_mask" in losses
    sum(losses.values()).backward()

    for name, p in model.backbone.body.named_parameters():
        if name.startswith(("conv1", "bn1", "layer1.")):
            assert not p.requires_grad and p.grad is None, name
        else:
            assert p.grad is not None, f"no gradient reached {name}"
    for stage in ("layer2", "layer3", "layer4"):
        grads = [p.grad.abs().sum() for p in getattr(model.backbone.body, stage).parameters()]
        assert sum(grads) > 0, stage
    assert all(p.grad is not None for p in model.backbone.fpn.parameters())


def test_keypoint_rcnn_training_step():
    model = build_detector(
        "keypoint_rcnn", backbone="resnet18", num_classes=2, num_keypoints=5,
        backbone_options={"fpn_channels": 32}, min_size=96, max_size=96, **_RCNN_TRAIN,
    ).train()
    boxes = torch.tensor([[10.0, 10.0, 60.0, 80.0]])
    keypoints = torch.tensor([[[20.0, 20.0, 1.0], [30.0, 40.0, 1.0], [40.0, 50.0, 1.0], [50.0, 60.0, 0.0], [25.0, 70.0, 1.0]]])
    targets = [{"boxes": boxes, "labels": torch.tensor([1]), "keypoints": keypoints}]
    losses = model([torch.rand(3, 96, 96)], targets)
    assert "loss_keypoint" in losses and all(torch.isfinite(v) for v in losses.values())
    with pytest.raises(ValueError, match=r"target 0\['keypoints'\] must have shape \(1, K, 3\)"):
        model([torch.rand(3, 96, 96)], [{**targets[0], "keypoints": keypoints[..., :2]}])


# ----------------------------------------------------------------------------------------- weights
def _small(kind: str = "faster_rcnn", **kwargs) -> nn.Module:
    return build_detector(kind, backbone="resnet18", num_classes=3, backbone_options={"fpn_channels": 32}, **kwargs)


def _legacy(key: str) -> str:
    """The key names of torchvision checkpoints saved before 0.13 (what the COCO v1 files hold)."""
    key = re.sub(r"fpn\.(inner|layer)_blocks\.(\d+)\.0\.", r"fpn.\1_blocks.\2.", key)
    key = key.replace("rpn.head.conv.0.0.", "rpn.head.conv.")
    key = re.sub(r"mask_head\.(\d)\.0\.", lambda m: f"mask_head.mask_fcn{int(m.group(1)) + 1}.", key)
    return re.sub(r"_head\.conv\.(\d)\.0\.", lambda m: f"_head.conv.{2 * int(m.group(1))}.", key)


@pytest.mark.parametrize("kind", ["mask_rcnn", "retinanet"])
def test_old_torchvision_key_layout_loads(kind, tmp_path):
    source = randomize_(_small(kind))
    state = {_legacy(k): v for k, v in source.state_dict().items()}
    assert sum(k not in source.state_dict() for k in state) >= 9  # the renames did happen
    path = tmp_path / "old.pth"
    torch.save(state, path)
    target = _small(kind)
    report = load_torchvision_weights(target, str(path))
    assert report.ok and any("renamed" in note for note in report.notes)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_report_names_missing_and_unexpected_keys():
    state = _small().state_dict()
    state["roi_heads.extra.weight"] = torch.zeros(1)
    del state["roi_heads.box_predictor.cls_score.bias"]
    with pytest.raises(WeightsMismatchError) as err:
        load_torchvision_weights(_small(), state)
    assert "roi_heads.extra.weight" in str(err.value) and "cls_score.bias" in str(err.value)
    report = load_torchvision_weights(_small(), state, strict=False)
    assert report.unexpected == ["roi_heads.extra.weight"]
    assert report.missing == ["roi_heads.box_predictor.cls_score.bias"]
    with pytest.raises(WeightsMismatchError, match="shape mismatch"):
        load_torchvision_weights(_small(), build_detector("faster_rcnn", backbone="resnet18", num_classes=5, backbone_options={"fpn_channels": 32}).state_dict())


def test_remap_hook_is_called_first_and_frozen_bn_eps():
    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Conv2d(3, 4, 1), FrozenBatchNorm2d(4))

        def remap_torchvision_keys(self, state):
            return {k.replace("backbone.", "net."): v for k, v in state.items()}

    ref = nn.Sequential(nn.Conv2d(3, 4, 1), FrozenBatchNorm2d(4))
    state = {f"backbone.{k}": v for k, v in ref.state_dict().items()}
    model = Wrapped()
    report = load_torchvision_weights(model, state, frozen_bn_eps=0.0)
    assert report.ok and model.net[1].eps == 0.0
    assert torch.equal(model.net[0].weight, ref[0].weight)


# -------------------------------------------------------------------------------------- bad input
def test_mismatched_anchors_are_named():
    with pytest.raises(ValueError, match=r"anchor_sizes gives 4 level\(s\) but the backbone's pyramid has 5 \(p2, p3, p4, p5, p6\)"):
        _small(anchor_sizes=((32,), (64,), (128,), (256,)))
    with pytest.raises(ValueError, match="aspect_ratios gives 2 level"):
        _small("retinanet", aspect_ratios=((0.5, 1.0), (1.0, 2.0)))
    three_levels = AnchorGenerator(((32,), (64,), (128,)), ((1.0,),) * 3)
    with pytest.raises(ValueError, match="rpn_anchor_generator has 3 sizes entries but the backbone's pyramid has 5"):
        _small(rpn_anchor_generator=three_levels)
    uneven = AnchorGenerator(((32,), (64,), (128,), (256,), (512, 600)), ((1.0,),) * 5)
    with pytest.raises(ValueError, match="different number of anchors per location.*p6: 2"):
        _small(rpn_anchor_generator=uneven)
    with pytest.raises(ValueError, match="exactly 1"):
        _small("fcos", aspect_ratios=(0.5, 1.0))
    with pytest.raises(ValueError, match="either rpn_anchor_generator or anchor_sizes"):
        _small(rpn_anchor_generator=three_levels, anchor_sizes=(1, 2, 3))


def test_wrong_feature_names_are_named():
    with pytest.raises(ValueError, match=r"box_roi_pool reads feature maps \['0', '1', '2', '3'\].*p2, p3, p4, p5, p6"):
        _small(box_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2))
    with pytest.raises(ValueError, match="mask_roi_pool.*'p7'"):
        _small("mask_rcnn", mask_roi_pool=MultiScaleRoIAlign(["p5", "p7"], 14, 2))


@pytest.mark.parametrize("kind, num_classes", [("faster_rcnn", 1), ("mask_rcnn", 0), ("keypoint_rcnn", 1)])
def test_num_classes_counts_background_for_rcnns(kind, num_classes):
    with pytest.raises(ValueError, match="counts the background.*N object classes need num_classes=N\\+1"):
        build_detector(kind, backbone="resnet18", num_classes=num_classes)


def test_num_classes_of_one_stage_detectors_and_types():
    with pytest.raises(ValueError, match="no background class"):
        build_detector("retinanet", backbone="resnet18", num_classes=0)
    with pytest.raises(TypeError, match="num_classes must be an integer"):
        build_detector("fcos", backbone="resnet18", num_classes=2.0)
    assert build_detector("fcos", backbone="resnet18", num_classes=1, backbone_options={"fpn_channels": 32})


def test_unknown_names_and_options():
    with pytest.raises(UnknownBackboneError, match="unknown backbone 'resnet5'.*did you mean"):
        build_detector("faster_rcnn", backbone="resnet5", num_classes=2)
    with pytest.raises(ValueError, match="unknown detector kind 'fasterrcnn'; did you mean faster_rcnn"):
        build_detector("fasterrcnn", backbone="resnet18", num_classes=2)
    with pytest.raises(ValueError, match="unknown option\\(s\\) box_score_threshold for faster_rcnn"):
        build_detector("faster_rcnn", backbone="resnet18", num_classes=2, box_score_threshold=0.1)
    with pytest.raises(ValueError, match="unknown option\\(s\\) frozen_stage"):
        build_detector("faster_rcnn", backbone="resnet18", num_classes=2, backbone_options={"frozen_stage": 1})
    with pytest.raises(ValueError, match="no v2 recipe for fcos"):
        build_detector("fcos", backbone="resnet18", num_classes=2, version="v2")
    pyramid = create_fpn_backbone("resnet18", fpn_channels=32)
    with pytest.raises(ValueError, match="backbone_options only apply when backbone is a name"):
        build_detector("faster_rcnn", backbone=pyramid, num_classes=2, backbone_options={"norm": "GN"})
    with pytest.raises(TypeError, match="needs an int 'out_channels'"):
        build_detector("faster_rcnn", backbone=resnet18(), num_classes=2)


@pytest.mark.parametrize("kind", ["faster_rcnn", "retinanet", "fcos"])
def test_bad_training_targets_are_named(kind):
    model = _small(kind, min_size=64, max_size=64).train()
    batch = [torch.rand(3, 64, 64)]
    flipped = [{"boxes": torch.tensor([[30.0, 10.0, 20.0, 40.0]]), "labels": torch.tensor([1])}]
    with pytest.raises(ValueError, match=r"target 0: box 0 \[30.0, 10.0, 20.0, 40.0\] has x2 <= x1"):
        model(batch, flipped)
    with pytest.raises(ValueError, match="targets are required in training mode"):
        model(batch)
    with pytest.raises(ValueError, match="label 3 is out of range"):
        model(batch, [{"boxes": torch.tensor([[1.0, 1.0, 9.0, 9.0]]), "labels": torch.tensor([3])}])
    with pytest.raises(ValueError, match=r"target 0\['labels'\] must be an int64 tensor of shape \(1,\)"):
        model(batch, [{"boxes": torch.tensor([[1.0, 1.0, 9.0, 9.0]]), "labels": torch.tensor([1.0])}])
    with pytest.raises(ValueError, match="got 1 images but 2 targets"):
        model(batch, flipped * 2)


def test_rcnn_label_zero_is_background_and_masks_are_required():
    model = _small("mask_rcnn", min_size=64, max_size=64).train()
    target = {"boxes": torch.tensor([[1.0, 1.0, 9.0, 9.0]]), "labels": torch.tensor([0])}
    with pytest.raises(ValueError, match="label 0 is out of range.*0 is the background"):
        model([torch.rand(3, 64, 64)], [{**target, "masks": torch.zeros(1, 64, 64)}])
    with pytest.raises(ValueError, match="target 0 has no 'masks'"):
        model([torch.rand(3, 64, 64)], [{**target, "labels": torch.tensor([1])}])
