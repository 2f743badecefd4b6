"""One-call torchvision detectors (Faster R-CNN, Mask R-CNN, Keypoint R-CNN, RetinaNet, FCOS) on
any backbone of this package.

``build_detector`` returns the stock torchvision model class; what users usually get wrong when
wiring a custom backbone into it (``out_channels``, one anchor entry per feature map, RoI-align
``featmap_names``, the background class) is derived from the pyramid's ``feature_info``, and
overrides are checked against it.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Mapping

from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, KeypointRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign

from backbones import create_fpn_backbone

from .anchors import (
    Levels,
    check_anchor_generator,
    check_roi_pool,
    default_anchor_sizes,
    make_anchor_generator,
    make_roi_pool,
)
from .compat import set_box_loss
from .targets import TargetCheck

VERSIONS = ("v1", "v2")


@dataclass(frozen=True)
class DetectorKind:
    """How one torchvision detector family is put on a pyramid."""

    cls: type[nn.Module]
    #: extra pyramid levels of the torchvision resnet50 recipe ("maxpool" = P6, "p6p7" = P6/P7)
    extra: str
    #: whether ``num_classes`` counts the background (label 0)
    background: bool
    #: anchor size per unit of stride and scales per octave (torchvision's anchor tables)
    size_per_stride: float
    scales_per_octave: int
    aspect_ratios: tuple[float, ...]
    #: the constructor argument holding the anchor generator
    anchor_option: str
    #: RoI poolers (constructor argument, output size); they read the trunk-derived levels
    roi_pools: tuple[tuple[str, int], ...] = ()
    #: predictors that, all given, replace ``num_classes`` in the torchvision constructor
    predictors: tuple[str, ...] = ()
    anchors_per_location: int | None = None
    masks: bool = False
    keypoints: bool = False


_RCNN = dict(background=True, size_per_stride=8, scales_per_octave=1, aspect_ratios=(0.5, 1.0, 2.0), anchor_option="rpn_anchor_generator")

KINDS: dict[str, DetectorKind] = {
    "faster_rcnn": DetectorKind(FasterRCNN, "maxpool", **_RCNN, roi_pools=(("box_roi_pool", 7),), predictors=("box_predictor",)),
    "mask_rcnn": DetectorKind(
        MaskRCNN,
        "maxpool",
        **_RCNN,
        roi_pools=(("box_roi_pool", 7), ("mask_roi_pool", 14)),
        predictors=("box_predictor", "mask_predictor"),
        masks=True,
    ),
    "keypoint_rcnn": DetectorKind(
        KeypointRCNN,
        "maxpool",
        **_RCNN,
        roi_pools=(("box_roi_pool", 7), ("keypoint_roi_pool", 14)),
        predictors=("box_predictor",),
        keypoints=True,
    ),
    "retinanet": DetectorKind(
        RetinaNet, "p6p7", background=False, size_per_stride=4, scales_per_octave=3,
        aspect_ratios=(0.5, 1.0, 2.0), anchor_option="anchor_generator",
    ),
    "fcos": DetectorKind(
        FCOS, "p6p7", background=False, size_per_stride=1, scales_per_octave=1,
        aspect_ratios=(1.0,), anchor_option="anchor_generator", anchors_per_location=1,
    ),
}

#: transform options torchvision's detectors forward to ``GeneralizedRCNNTransform``
_TRANSFORM_OPTIONS = tuple(
    n for n in inspect.signature(GeneralizedRCNNTransform.__init__).parameters
    if n not in ("self", "min_size", "max_size", "image_mean", "image_std", "kwargs")
)


def accepted_options(kind: str) -> tuple[str, ...]:
    """Keyword arguments ``build_detector(kind, ...)`` passes on to the torchvision class."""
    params = inspect.signature(get_kind(kind).cls.__init__).parameters
    own = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return tuple(n for n in own if n not in ("self", "backbone", "num_classes")) + _TRANSFORM_OPTIONS


def get_kind(kind: str) -> DetectorKind:
    """The :class:`DetectorKind` of ``kind``; an unknown kind is an error listing the known ones."""
    if kind not in KINDS:
        close = difflib.get_close_matches(str(kind), list(KINDS), n=2, cutoff=0.5)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise ValueError(f"unknown detector kind {kind!r}{hint} (known: {', '.join(KINDS)})")
    return KINDS[kind]


def counts_background(kind: str) -> bool:
    """Whether ``kind``'s ``num_classes`` counts the background (the R-CNNs: labels 1..K, 0 is
    background) or not (RetinaNet, FCOS: labels 0..K-1)."""
    return get_kind(kind).background


def _check_num_classes(kind: str, spec: DetectorKind, num_classes: Any) -> None:
    if not isinstance(num_classes, int) or isinstance(num_classes, bool):
        raise TypeError(f"num_classes must be an integer; got {num_classes!r}")
    if spec.background and num_classes < 2:
        raise ValueError(
            f"num_classes={num_classes} is too small for {kind}: as in torchvision it counts the background "
            f"(label 0), so N object classes need num_classes=N+1 and it must be at least 2"
        )
    if not spec.background and num_classes < 1:
        raise ValueError(
            f"num_classes={num_classes} is too small for {kind}: it is the number of object classes "
            f"(labels 0..num_classes-1, no background class), at least 1"
        )


def _trunk_defaults(version: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """torchvision's trunk recipe: with backbone weights, FrozenBN (v1) and the stem and stage 1
    frozen; without, trainable BN everywhere (what ``weights_backbone=None`` builds)."""
    pretrained = options.get("weights") is not None
    defaults: dict[str, Any] = {"frozen_stages": 1 if pretrained else -1}
    defaults["norm"] = "FrozenBN" if pretrained and version == "v1" else "BN"
    return defaults


def _resolve_backbone(
    backbone: str | nn.Module, kind: str, spec: DetectorKind, version: str, backbone_options: Mapping[str, Any] | None
) -> nn.Module:
    if isinstance(backbone, str):
        options = dict(backbone_options or {})
        fpn_defaults: dict[str, Any] = {"extra": spec.extra}
        if version == "v2" and spec.extra == "maxpool":
            fpn_defaults["fpn_norm"] = "BN"
        if version == "v2" and spec.extra == "p6p7":
            fpn_defaults["p6p7_from"] = "c5"
        return create_fpn_backbone(backbone, **{**fpn_defaults, **_trunk_defaults(version, options), **options})
    if not isinstance(backbone, nn.Module):
        raise TypeError(f"backbone must be a backbone name or a module from create_fpn_backbone; got {type(backbone).__name__}")
    if backbone_options:
        raise ValueError("backbone_options only apply when backbone is a name; this backbone is already built")
    channels = getattr(backbone, "out_channels", None)
    levels = getattr(backbone, "feature_info", None)
    if not isinstance(channels, int) or not levels:
        raise TypeError(
            f"backbone {type(backbone).__name__} needs an int 'out_channels' and a 'feature_info' list of "
            "(name, channels, stride) per returned map, as create_fpn_backbone's modules have"
        )
    uneven = [f"{level.name}: {level.channels}" for level in levels if level.channels != channels]
    if uneven:
        raise ValueError(
            f"torchvision detector heads need the same channel count on every level; backbone has "
            f"out_channels={channels} but {', '.join(uneven)} (put an FPN on it: create_fpn_backbone)"
        )
    return backbone


def _check_build_options(
    kind: str, spec: DetectorKind, num_classes: Any, version: str, kwargs: Mapping[str, Any]
) -> None:
    """Everything ``build_detector`` can reject before building anything."""
    _check_num_classes(kind, spec, num_classes)
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {', '.join(map(repr, VERSIONS))}; got {version!r}")
    accepted = accepted_options(kind)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for {kind} ({spec.cls.__name__}); accepted: "
            f"{', '.join(accepted)}, plus backbone_options, version, anchor_sizes, aspect_ratios"
        )
    if version == "v2":
        _v2_parts(kind, spec, 0, 0, 0)  # no v2 recipe: an error


def _anchor_generator(
    spec: DetectorKind, levels: Levels, given: AnchorGenerator | None, anchor_sizes: Any, aspect_ratios: Any
) -> AnchorGenerator:
    """The user's anchor generator, checked against the pyramid, or one made from
    ``anchor_sizes``/``aspect_ratios`` (default: the kind's torchvision tables scaled by stride)."""
    option = spec.anchor_option
    if given is not None:
        if anchor_sizes is not None or aspect_ratios is not None:
            raise ValueError(f"give either {option} or anchor_sizes/aspect_ratios, not both")
        check_anchor_generator(given, levels, option=option, anchors_per_location=spec.anchors_per_location)
        return given
    if anchor_sizes is None:
        anchor_sizes = default_anchor_sizes(levels, spec.size_per_stride, spec.scales_per_octave)
    return make_anchor_generator(
        levels,
        sizes=anchor_sizes,
        aspect_ratios=aspect_ratios if aspect_ratios is not None else spec.aspect_ratios,
        anchors_per_location=spec.anchors_per_location,
    )


def _roi_pools(spec: DetectorKind, pyramid: nn.Module, kwargs: Mapping[str, Any]) -> dict[str, MultiScaleRoIAlign]:
    """The kind's RoI poolers: the user's, checked against the pyramid, or torchvision's over the
    levels computed from trunk taps (not the extra P6/P7)."""
    levels = list(pyramid.feature_info)
    roi_levels = [level.name for level in levels if level.name in getattr(pyramid, "trunk_levels", [level.name])]
    pools = {}
    for option, output_size in spec.roi_pools:
        if kwargs.get(option) is not None:
            check_roi_pool(kwargs[option], levels, option=option)
            pools[option] = kwargs[option]
        else:
            pools[option] = make_roi_pool(roi_levels, output_size)
    return pools


def _v2_defaults(
    kind: str, spec: DetectorKind, pyramid: nn.Module, kwargs: Mapping[str, Any], num_classes: int
) -> dict[str, nn.Module]:
    """torchvision's ``*_v2`` heads for the head options the user left unset."""
    num_anchors = kwargs[spec.anchor_option].num_anchors_per_location()[0]
    parts = _v2_parts(kind, spec, pyramid.out_channels, num_anchors, num_classes)
    return {option: make() for option, make in parts.items() if kwargs.get(option) is None}


def _v2_parts(kind: str, spec: DetectorKind, channels: int, num_anchors: int, num_classes: int) -> dict[str, Callable[[], nn.Module]]:
    """torchvision's ``*_v2`` heads (Li et al., 2021: BN/GN in the heads, GIoU for RetinaNet)."""
    bn = nn.BatchNorm2d
    if kind in ("faster_rcnn", "mask_rcnn"):
        parts: dict[str, Callable[[], nn.Module]] = {
            "rpn_head": lambda: RPNHead(channels, num_anchors, conv_depth=2),
            "box_head": lambda: FastRCNNConvFCHead((channels, 7, 7), [256] * 4, [1024], norm_layer=bn),
        }
        if kind == "mask_rcnn":
            parts["mask_head"] = lambda: MaskRCNNHeads(channels, [256] * 4, 1, norm_layer=bn)
        return parts
    if kind == "retinanet":

        def head() -> nn.Module:
            module = RetinaNetHead(channels, num_anchors, num_classes, norm_layer=partial(nn.GroupNorm, 32))
            set_box_loss(module.regression_head, "giou")
            return module

        return {"head": head}
    raise ValueError(f"torchvision has no v2 recipe for {kind}; use version='v1'")


def build_detector(
    kind: str,
    *,
    backbone: str | nn.Module,
    num_classes: int,
    backbone_options: Mapping[str, Any] | None = None,
    version: str = "v1",
    anchor_sizes=None,
    aspect_ratios=None,
    **kwargs: Any,
) -> nn.Module:
    """Build a torchvision detector on one of this package's backbones.

    Args:
        kind: ``"faster_rcnn"``, ``"mask_rcnn"``, ``"keypoint_rcnn"``, ``"retinanet"`` or ``"fcos"``.
        backbone: a backbone name (:func:`backbones.list_backbones`), which builds the pyramid of
            torchvision's resnet50 recipe for ``kind`` (P2-P6 with a max-pooled P6 for the R-CNNs,
            P3-P7 with conv P6/P7 for RetinaNet/FCOS), or a module from
            :func:`backbones.create_fpn_backbone` (anything with ``out_channels`` and a
            ``feature_info`` of equal-channel levels).
        num_classes: as in torchvision: for the R-CNNs it counts the background (label 0), so N
            object classes need ``N + 1`` (at least 2); for RetinaNet and FCOS it is the number of
            object classes, labels ``0..num_classes-1`` (torchvision's COCO models use 91 for all).
        backbone_options: with a backbone name, keyword arguments of ``create_fpn_backbone``:
            trunk options (``weights``, ``norm``, ``frozen_stages``, ``norm_eval``, ...) and pyramid
            options (``fpn_channels``, ``extra``, ``p6p7_from``, ``fpn_norm``, ``out_features``).
            Defaults follow torchvision: with trunk ``weights``, ``norm="FrozenBN"`` (v1) and
            ``frozen_stages=1`` (trainable_backbone_layers=3); without, ``"BN"`` and nothing frozen.
        version: ``"v1"`` or ``"v2"`` (torchvision's ``*_v2`` recipes for Faster/Mask R-CNN and
            RetinaNet: normed FPN and heads, RetinaNet P6 from C5 and GIoU loss).
        anchor_sizes: per-level anchor sizes, one tuple per pyramid level (or one number per
            level); default derived from the level strides (8 x stride for the R-CNNs, 4 x stride
            at three scales per octave for RetinaNet, the stride for FCOS).
        aspect_ratios: per-level ratios, or one tuple used on every level.
        **kwargs: options of the torchvision class (``min_size``, ``max_size``,
            ``box_score_thresh``, ``rpn_anchor_generator``, ``box_roi_pool``, ``head``, ...);
            given anchor generators and RoI poolers are checked against the pyramid's levels.

    Returns:
        The torchvision model (``FasterRCNN``, ``MaskRCNN``, ``KeypointRCNN``, ``RetinaNet`` or
        ``FCOS``); in training mode its targets are checked first (``ValueError`` on bad boxes,
        labels out of range, missing masks).
    """
    spec = get_kind(kind)
    _check_build_options(kind, spec, num_classes, version, kwargs)
    pyramid = _resolve_backbone(backbone, kind, spec, version, backbone_options)
    levels = list(pyramid.feature_info)
    anchors = kwargs.get(spec.anchor_option)
    kwargs[spec.anchor_option] = _anchor_generator(spec, levels, anchors, anchor_sizes, aspect_ratios)
    kwargs.update(_roi_pools(spec, pyramid, kwargs))
    if version == "v2":
        kwargs.update(_v2_defaults(kind, spec, pyramid, kwargs, num_classes))

    custom_predictors = bool(spec.predictors) and all(kwargs.get(p) is not None for p in spec.predictors)
    model = spec.cls(pyramid, num_classes=None if custom_predictors else num_classes, **kwargs)
    model.register_forward_pre_hook(
        TargetCheck(num_classes, background=spec.background, masks=spec.masks, keypoints=spec.keypoints),
        with_kwargs=True,
    )
    return model
