"""``build_segmenter``: a DeepLabV3 / DeepLabV3+ segmenter on any trunk in one call."""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from torchvision.models.segmentation.fcn import FCNHead

from backbones import create_backbone

from .aspp import default_atrous_rates
from .deeplab import DeepLabV3, DeepLabV3Head, DeepLabV3Plus, DeepLabV3PlusHead

#: kind -> segmenter class.
SEGMENTER_KINDS: dict[str, type[DeepLabV3]] = {"deeplabv3": DeepLabV3, "deeplabv3plus": DeepLabV3Plus}
SEGMENTER_OUTPUT_STRIDES = (8, 16)


def _positive_int(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return value


def _trunk_taps(trunk: nn.Module) -> dict[str, Any]:
    """``{tap: FeatureInfo}`` of a trunk module, or a clear error when it has no ``feature_info``."""
    info = getattr(trunk, "feature_info", None)
    if info is None:
        raise TypeError(
            f"backbone must be a variant name or a trunk with feature_info (from backbones.create_backbone); "
            f"got {type(trunk).__name__} without feature_info"
        )
    try:
        return {f.name: f for f in info}
    except (TypeError, AttributeError) as err:
        raise TypeError(f"backbone.feature_info must list (name, channels, stride) entries; got {info!r}") from err


def _check_segmenter_options(
    kind: str, output_stride: Any, num_classes: Any, aspp_channels: Any, low_level_channels: Any, aux: Any
) -> None:
    if kind not in SEGMENTER_KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, SEGMENTER_KINDS))}; got {kind!r}")
    if output_stride not in SEGMENTER_OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be 8 or 16 for DeepLab; got {output_stride!r}")
    _positive_int("num_classes", num_classes)
    _positive_int("aspp_channels", aspp_channels)
    _positive_int("low_level_channels", low_level_channels)
    if not isinstance(aux, bool):
        raise ValueError(f"aux must be True or False; got {aux!r}")


def _resolve_trunk(
    backbone: str | nn.Module,
    needed: tuple[str, ...],
    output_stride: int,
    weights: str | os.PathLike | Mapping[str, torch.Tensor] | None,
    options: Mapping[str, Any],
) -> nn.Module:
    """The trunk: built from a variant name with the ``needed`` taps, or the given module as it is."""
    if isinstance(backbone, str):
        if "out_features" in options:
            raise ValueError(f"build_segmenter chooses the trunk taps itself ({', '.join(needed)}); drop out_features")
        return create_backbone(backbone, out_features=needed, output_stride=output_stride, weights=weights, **options)
    if not isinstance(backbone, nn.Module):
        raise TypeError(f"backbone must be a variant name or a trunk module; got {type(backbone).__name__}")
    if options or weights is not None:
        extra = sorted(options) + (["backbone_weights"] if weights is not None else [])
        raise ValueError(
            f"backbone options ({', '.join(extra)}) apply only when backbone is a name; "
            "pass them to create_backbone when building the trunk yourself"
        )
    return backbone


def _check_trunk_taps(
    trunk: nn.Module, kind: str, aux: bool, needed: tuple[str, ...], output_stride: int
) -> dict[str, Any]:
    """The trunk's ``{tap: FeatureInfo}``, once it is known to return the ``needed`` taps with c5 at
    ``output_stride``."""
    taps = _trunk_taps(trunk)
    absent = [t for t in needed if t not in taps]
    if absent:
        raise ValueError(
            f"{kind}{' with aux' if aux else ''} needs trunk taps {', '.join(needed)}; the trunk returns "
            f"{', '.join(taps) or 'none'} (missing {', '.join(absent)}); build it with "
            f"create_backbone(..., out_features={needed!r})"
        )
    if taps["c5"].stride != output_stride:
        raise ValueError(
            f"the trunk's c5 has stride {taps['c5'].stride} but output_stride={output_stride}; build it with "
            f"create_backbone(..., output_stride={output_stride}) or pass output_stride={taps['c5'].stride} "
            "if that is 8 or 16"
        )
    return taps


def build_segmenter(
    kind: str,
    *,
    backbone: str | nn.Module,
    num_classes: int,
    output_stride: int = 16,
    aux: bool = False,
    atrous_rates: Sequence[int] | None = None,
    aspp_channels: int = 256,
    aspp_dropout: float = 0.5,
    low_level_channels: int = 48,
    backbone_weights: str | os.PathLike | Mapping[str, torch.Tensor] | None = None,
    **backbone_options: Any,
) -> DeepLabV3:
    """Build a DeepLab segmenter whose ``forward(x)`` returns ``{"out": [N, C, H, W]}`` (+ ``"aux"``).

    Args:
        kind: ``"deeplabv3"`` (ASPP on c5) or ``"deeplabv3plus"`` (ASPP on c5 fused with c2).
        backbone: a variant name (see ``backbones.list_backbones()``), built with
            ``create_backbone(name, out_features=<taps the head needs>, output_stride=output_stride,
            **backbone_options)``; or a trunk module with ``feature_info`` returning those taps.
        num_classes: number of output classes (>= 1).
        output_stride: 16 or 8; sets the trunk's dilation and the default atrous rates.
        aux: add torchvision's auxiliary FCN head on c4 (output ``"aux"``).
        atrous_rates: ASPP rates; default (6, 12, 18) at output stride 16, (12, 24, 36) at 8.
        aspp_channels: width of ASPP and the decoder (256).
        aspp_dropout: dropout after the ASPP projection (0.5, torchvision's value).
        low_level_channels: DeepLabV3+ projection width of c2 (48).
        backbone_weights: checkpoint for the trunk (path, URL or state dict), loaded by
            ``create_backbone``; only with a backbone name.
        **backbone_options: trunk options (``norm``, ``frozen_stages``, ``multi_grid``, ...);
            only with a backbone name.

    Returns:
        A :class:`DeepLabV3` or :class:`DeepLabV3Plus` module.
    """
    _check_segmenter_options(kind, output_stride, num_classes, aspp_channels, low_level_channels, aux)
    rates = default_atrous_rates(output_stride) if atrous_rates is None else tuple(atrous_rates)
    cls = SEGMENTER_KINDS[kind]
    needed = tuple(t for t in ("c2", "c4", "c5") if t in cls.head_taps or (aux and t == "c4"))
    trunk = _resolve_trunk(backbone, needed, output_stride, backbone_weights, backbone_options)
    taps = _check_trunk_taps(trunk, kind, aux, needed, output_stride)
    if cls is DeepLabV3Plus:
        classifier: nn.Module = DeepLabV3PlusHead(
            taps["c5"].channels,
            taps["c2"].channels,
            num_classes,
            rates,
            channels=aspp_channels,
            low_level_channels=low_level_channels,
            dropout=aspp_dropout,
        )
    else:
        classifier = DeepLabV3Head(taps["c5"].channels, num_classes, rates, channels=aspp_channels, dropout=aspp_dropout)
    aux_classifier = FCNHead(taps["c4"].channels, num_classes) if aux else None
    return cls(trunk, classifier, aux_classifier)
