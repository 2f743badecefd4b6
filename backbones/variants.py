"""The declarative variant table and the public constructors ``create_backbone`` / ``list_backbones``."""

from __future__ import annotations

import difflib
import fnmatch
import os
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import torch

from .trunk import STAGE_TAPS, ResNet


@dataclass(frozen=True)
class Variant:
    """Architecture arguments of one named variant and the library that defines its reference."""

    block: str
    layers: tuple[int, int, int, int]
    groups: int = 1
    base_width: int = 64
    scale: int = 4
    deep_stem: bool = False
    avg_down: bool = False
    reference: str = "torchvision"

    def architecture(self) -> dict[str, Any]:
        args = asdict(self)
        args.pop("reference")
        if self.block != "bottle2neck":
            args.pop("scale")
        return args


_R50, _R101, _R152 = (3, 4, 6, 3), (3, 4, 23, 3), (3, 8, 36, 3)
_TIMM_D = dict(deep_stem=True, avg_down=True, reference="timm")

#: name -> architecture. torchvision defines the plain, ResNeXt and Wide ResNets; timm the "-d"
#: ResNets (deep stem + average-pool shortcut, He et al. 2019), ResNeXt-101 32x4d and every Res2Net
#: (whose keys are also those of the official Res2Net release).
VARIANTS: dict[str, Variant] = {
    "resnet18": Variant("basic", (2, 2, 2, 2)),
    "resnet34": Variant("basic", (3, 4, 6, 3)),
    "resnet50": Variant("bottleneck", _R50),
    "resnet101": Variant("bottleneck", _R101),
    "resnet152": Variant("bottleneck", _R152),
    "resnet50d": Variant("bottleneck", _R50, **_TIMM_D),
    "resnet101d": Variant("bottleneck", _R101, **_TIMM_D),
    "resnext50_32x4d": Variant("bottleneck", _R50, groups=32, base_width=4),
    "resnext101_32x4d": Variant("bottleneck", _R101, groups=32, base_width=4, reference="timm"),
    "resnext101_32x8d": Variant("bottleneck", _R101, groups=32, base_width=8),
    "resnext101_64x4d": Variant("bottleneck", _R101, groups=64, base_width=4),
    "wide_resnet50_2": Variant("bottleneck", _R50, base_width=128),
    "wide_resnet101_2": Variant("bottleneck", _R101, base_width=128),
    "res2net50_26w_4s": Variant("bottle2neck", _R50, base_width=26, scale=4, reference="timm"),
    "res2net50_26w_6s": Variant("bottle2neck", _R50, base_width=26, scale=6, reference="timm"),
    "res2net50_26w_8s": Variant("bottle2neck", _R50, base_width=26, scale=8, reference="timm"),
    "res2net50_48w_2s": Variant("bottle2neck", _R50, base_width=48, scale=2, reference="timm"),
    "res2net50_14w_8s": Variant("bottle2neck", _R50, base_width=14, scale=8, reference="timm"),
    "res2net101_26w_4s": Variant("bottle2neck", _R101, base_width=26, scale=4, reference="timm"),
    "res2next50": Variant("bottle2neck", _R50, groups=8, base_width=4, scale=4, reference="timm"),
    "res2net50d": Variant("bottle2neck", _R50, base_width=26, scale=4, **_TIMM_D),
    "res2net101d": Variant("bottle2neck", _R101, base_width=26, scale=4, **_TIMM_D),
}

#: Options ``create_backbone`` accepts on top of the variant's architecture (see ``ResNet``).
OPTIONS = (
    "style",
    "deep_stem",
    "avg_down",
    "in_channels",
    "norm",
    "norm_eval",
    "frozen_stages",
    "output_stride",
    "multi_grid",
    "checkpointing",
    "drop_path_rate",
    "zero_init_residual",
    "dcn_stages",
)


class UnknownBackboneError(ValueError):
    """Raised for a backbone name that is not in the variant table."""


def list_backbones(pattern: str | None = None) -> list[str]:
    """Names of every variant, in table order, optionally filtered by a shell-style ``pattern``."""
    names = list(VARIANTS)
    return names if pattern is None else [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def get_variant(name: str) -> Variant:
    """The table entry for ``name``; an unknown name is an error listing the close matches."""
    try:
        return VARIANTS[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name), list(VARIANTS), n=4, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownBackboneError(
            f"unknown backbone {name!r}{hint} (list_backbones() gives all {len(VARIANTS)} names)"
        ) from None


def create_backbone(
    name: str,
    *,
    out_features: Sequence[str] = STAGE_TAPS,
    weights: str | os.PathLike | Mapping[str, torch.Tensor] | None = None,
    **options: Any,
) -> ResNet:
    """Build the backbone ``name`` (see :func:`list_backbones`).

    Args:
        name: variant name, e.g. ``"resnet50"``, ``"resnext101_32x8d"``, ``"res2net50_26w_4s"``.
        out_features: taps to return from ``forward``, among ``stem``, ``c2``, ``c3``, ``c4``, ``c5``.
        weights: a checkpoint (local path, URL or state dict) in torchvision, timm, official
            Res2Net, detectron2 or MMDetection naming, loaded strictly with :func:`load_weights`.
        **options: ``style``, ``deep_stem``, ``avg_down``, ``in_channels``, ``norm``,
            ``norm_eval``, ``frozen_stages``, ``output_stride``, ``multi_grid``, ``checkpointing``,
            ``drop_path_rate``, ``zero_init_residual``, ``dcn_stages`` (documented on ``ResNet``).

    Returns:
        A :class:`ResNet` whose ``forward(x)`` returns ``{tap: tensor}`` and whose
        ``feature_info`` lists ``(name, channels, stride)`` per returned tap.
    """
    variant = get_variant(name)
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for create_backbone; valid options: {', '.join(OPTIONS)}")
    model = ResNet(**{**variant.architecture(), **options}, out_features=out_features)
    model.name = name
    if weights is not None:
        from .weights import load_weights

        load_weights(model, weights)
    return model
