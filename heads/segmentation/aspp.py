"""Atrous Spatial Pyramid Pooling (Chen et al., DeepLabV3), laid out like torchvision's ``ASPP``."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .norm import FallbackBatchNorm2d, conv_norm_act

#: Atrous rates of the three 3x3 branches per output stride (DeepLabV3 paper, section 4.1).
DEFAULT_ATROUS_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}


def default_atrous_rates(output_stride: int) -> tuple[int, ...]:
    """The paper's atrous rates for ``output_stride`` 16 or 8."""
    if output_stride not in DEFAULT_ATROUS_RATES:
        raise ValueError(f"output_stride must be 8 or 16 for DeepLab; got {output_stride!r}")
    return DEFAULT_ATROUS_RATES[output_stride]


class ASPPPooling(nn.Sequential):
    """Image-level branch: global average pool, 1x1 conv, BN, ReLU, broadcast back to the map size.

    Its BN is :class:`FallbackBatchNorm2d`, so training with one image per batch works.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            FallbackBatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        return F.interpolate(super().forward(x), size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """ASPP: a 1x1 branch, one dilated 3x3 branch per rate, an image-pooling branch, then a 1x1
    projection (BN, ReLU, dropout) of their concatenation to ``out_channels``.

    Keys match torchvision's ``ASPP`` (``convs.{i}.*``, ``project.*``).
    """

    def __init__(
        self, in_channels: int, atrous_rates: Sequence[int], out_channels: int = 256, dropout: float = 0.5
    ) -> None:
        super().__init__()
        rates = tuple(atrous_rates)
        if not rates or any(not isinstance(r, int) or isinstance(r, bool) or r < 1 for r in rates):
            raise ValueError(f"atrous_rates must be a non-empty sequence of positive integers; got {atrous_rates!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {dropout!r}")
        self.atrous_rates = rates
        branches: list[nn.Module] = [conv_norm_act(in_channels, out_channels, 1)]
        branches += [conv_norm_act(in_channels, out_channels, 3, dilation=r) for r in rates]
        branches.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            nn.Conv2d(len(branches) * out_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))
