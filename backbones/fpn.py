"""Feature pyramid over a trunk: ``torchvision.ops.FeaturePyramidNetwork`` with named levels.

The module has the layout of torchvision's ``BackboneWithFPN`` (``body`` = the trunk, ``fpn`` =
the pyramid), so torchvision detector checkpoints (``backbone.body.*``, ``backbone.fpn.*``) load key
for key, and it carries ``out_channels``, which torchvision's detectors read. Levels are named
``p2``..``p7`` after the trunk tap they come from (``c2`` -> ``p2``); extra levels continue the
numbering (``p6``, ``p7`` on a c5 pyramid).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from functools import partial
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from .compat import set_p6p7_source
from .norm import make_norm
from .trunk import STAGE_TAPS, FeatureInfo, ResNet
from .variants import create_backbone

#: Extra levels above the deepest trunk level: none, one by stride-2 subsampling (Faster/Mask
#: R-CNN), or two by strided 3x3 convs (RetinaNet, FCOS).
EXTRAS = ("maxpool", "p6p7", None)
EXTRA_LEVELS = {"maxpool": 1, "p6p7": 2, None: 0}
#: Sources of the first P6/P7 conv: the last pyramid level or the last trunk feature map.
P6P7_SOURCES = ("p5", "c5")
FPN_NORMS = (None, "BN", "SyncBN", "GN")
#: Trunk taps feeding the pyramid, by extra-block kind (torchvision's resnet50 recipes).
DEFAULT_TAPS = {"maxpool": STAGE_TAPS, None: STAGE_TAPS, "p6p7": ("c3", "c4", "c5")}


def _level_name(tap: str) -> str:
    return "p" + tap[1:]


def _check_fpn_options(
    body: nn.Module, *, fpn_channels: int, extra: str | None, p6p7_from: str, fpn_norm: str | None
) -> list[FeatureInfo]:
    """The trunk's ``feature_info``, after checking that it and the options make a pyramid."""
    infos = list(getattr(body, "feature_info", ()))
    bad = [info.name for info in infos if info.name not in STAGE_TAPS]
    if not infos or bad:
        raise ValueError(
            f"an FPN is built on stage taps among {', '.join(STAGE_TAPS)}; the trunk returns "
            f"{[info.name for info in infos]} ({', '.join(bad) or 'nothing'} cannot feed a pyramid)"
        )
    if not isinstance(fpn_channels, int) or isinstance(fpn_channels, bool) or fpn_channels < 1:
        raise ValueError(f"fpn_channels must be a positive integer; got {fpn_channels!r}")
    _check_extra(extra)
    if p6p7_from not in P6P7_SOURCES:
        raise ValueError(f"p6p7_from must be one of {', '.join(map(repr, P6P7_SOURCES))}; got {p6p7_from!r}")
    if fpn_norm not in FPN_NORMS:
        raise ValueError(f"fpn_norm must be one of {', '.join(map(repr, FPN_NORMS))}; got {fpn_norm!r}")
    return infos


def _check_extra(extra: str | None) -> None:
    if extra not in EXTRAS:
        raise ValueError(f"extra must be one of {', '.join(map(repr, EXTRAS))}; got {extra!r}")


def _extra_block(extra: str | None, p6p7_from: str, fpn_channels: int, c5_channels: int) -> nn.Module | None:
    """torchvision's block for the levels above the trunk's: P6 by max-pool, or P6/P7 by convs."""
    if extra == "maxpool":
        return LastLevelMaxPool()
    if extra == "p6p7":
        block = LastLevelP6P7(fpn_channels if p6p7_from == "p5" else c5_channels, fpn_channels)
        # torchvision picks the source by comparing channel counts; say it explicitly instead.
        set_p6p7_source(block, from_p5=p6p7_from == "p5")
        return block
    return None


def pyramid_levels(infos: Sequence[FeatureInfo], fpn_channels: int, extra: str | None) -> list[FeatureInfo]:
    """``FeatureInfo`` of every pyramid level: one per trunk tap (``c3`` -> ``p3``), then the extra
    levels, each at twice the stride of the one below."""
    levels = [FeatureInfo(_level_name(info.name), fpn_channels, info.stride) for info in infos]
    last = infos[-1]
    index = int(last.name[1:])
    for k in range(EXTRA_LEVELS[extra]):
        levels.append(FeatureInfo(f"p{index + 1 + k}", fpn_channels, last.stride * 2 ** (k + 1)))
    return levels


class FPNBackbone(nn.Module):
    """A trunk with a feature pyramid on top, returning ``{level: tensor}``.

    Args:
        body: a trunk from :func:`create_backbone`; every returned tap (``c2``..``c5``) feeds the
            pyramid, with the channel counts its ``feature_info`` gives.
        fpn_channels: channels of every pyramid level (``out_channels``).
        extra: ``"maxpool"`` (one extra level by stride-2 subsampling), ``"p6p7"`` (two extra levels
            by strided 3x3 convs) or ``None``.
        p6p7_from: input of the P6 conv, the last pyramid level (``"p5"``, RetinaNet/FCOS v1) or
            the last trunk feature map (``"c5"``, RetinaNet v2 and the paper).
        fpn_norm: norm after the lateral and output convs: ``None``, ``"BN"``, ``"SyncBN"``, ``"GN"``.

    Attributes:
        out_channels: ``fpn_channels`` (read by torchvision detectors).
        feature_info: ``FeatureInfo(name, channels, stride)`` per returned level, shallow to deep.
        level_names: the returned level names; ``trunk_levels`` those computed from trunk taps.
    """

    def __init__(
        self,
        body: ResNet,
        *,
        fpn_channels: int = 256,
        extra: str | None = "maxpool",
        p6p7_from: str = "p5",
        fpn_norm: str | None = None,
    ) -> None:
        super().__init__()
        infos = _check_fpn_options(body, fpn_channels=fpn_channels, extra=extra, p6p7_from=p6p7_from, fpn_norm=fpn_norm)
        self.body = body
        self.fpn = FeaturePyramidNetwork(
            in_channels_list=[info.channels for info in infos],
            out_channels=fpn_channels,
            extra_blocks=_extra_block(extra, p6p7_from, fpn_channels, infos[-1].channels),
            norm_layer=partial(make_norm, fpn_norm) if fpn_norm else None,
        )
        self.out_channels = fpn_channels
        self.extra = extra
        self.p6p7_from = p6p7_from if extra == "p6p7" else None
        self.fpn_norm = fpn_norm
        self.feature_info = pyramid_levels(infos, fpn_channels, extra)
        self.trunk_levels = tuple(_level_name(info.name) for info in infos)
        self.level_names = tuple(level.name for level in self.feature_info)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        taps = self.body(x)
        pyramid = self.fpn(OrderedDict((_level_name(name), value) for name, value in taps.items()))
        # The FPN names its extra levels itself ("pool", or "p6"/"p7" whatever the depth): use ours.
        return OrderedDict(zip(self.level_names, pyramid.values()))


def create_fpn_backbone(
    name: str,
    *,
    fpn_channels: int = 256,
    extra: str | None = "maxpool",
    p6p7_from: str = "p5",
    fpn_norm: str | None = None,
    out_features: Sequence[str] | None = None,
    weights: str | os.PathLike | Mapping[str, torch.Tensor] | None = None,
    **backbone_options: Any,
) -> FPNBackbone:
    """Build the trunk ``name`` with a feature pyramid on top (see :class:`FPNBackbone`).

    Args:
        name: a variant of :func:`list_backbones`; channel counts come from the trunk's
            ``feature_info``, so ResNet-18/34 and every Res2Net work unchanged.
        fpn_channels, extra, p6p7_from, fpn_norm: see :class:`FPNBackbone`.
        out_features: trunk taps feeding the pyramid, among ``c2``..``c5``; by default ``c2``..``c5``
            (``extra="maxpool"`` or ``None``) or ``c3``..``c5`` (``"p6p7"``), as in torchvision's
            Faster R-CNN and RetinaNet/FCOS recipes.
        weights: a trunk checkpoint (anything :func:`load_weights` reads). To load a whole
            torchvision detector use ``heads.load_torchvision_weights`` on the detector.
        **backbone_options: options of :func:`create_backbone` (``norm``, ``frozen_stages``, ...).

    Returns:
        An :class:`FPNBackbone` returning ``{"p2": ..., ..., "p6"}`` (for the defaults), whose
        ``out_channels`` is ``fpn_channels`` and whose ``feature_info`` gives each level's stride.
    """
    _check_extra(extra)
    taps = DEFAULT_TAPS[extra] if out_features is None else out_features
    if isinstance(taps, str):
        taps = (taps,)
    bad = [t for t in taps if t not in STAGE_TAPS]
    if bad or not taps:
        raise ValueError(
            f"out_features of an FPN backbone must be stage taps among {', '.join(STAGE_TAPS)}; got {tuple(taps)!r}"
        )
    body = create_backbone(name, out_features=taps, weights=weights, **backbone_options)
    return FPNBackbone(body, fpn_channels=fpn_channels, extra=extra, p6p7_from=p6p7_from, fpn_norm=fpn_norm)
