"""Deformable 3x3 convolution (DCNv1) over ``torchvision.ops.DeformConv2d``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.ops import DeformConv2d


def conv3x3_geometry(*, stride: int = 1, dilation: int = 1, groups: int = 1, bias: bool = False) -> dict[str, Any]:
    """Keyword arguments of a 3x3 convolution whose padding keeps the size (divided by ``stride``),
    shared by the plain, the deformable and the offset-predicting convs so they sample alike."""
    return dict(kernel_size=3, stride=stride, padding=dilation, dilation=dilation, groups=groups, bias=bias)


class DeformConv3x3(DeformConv2d):
    """A drop-in for a bias-free 3x3 ``nn.Conv2d`` that learns its sampling offsets.

    The kernel is stored as ``weight`` with the same shape as the plain convolution's, so
    checkpoints of the plain network load into it unchanged. The offset predictor
    ``conv_offset`` starts at zero, which makes the layer equal to the plain convolution until
    training moves the offsets (the initialisation of Dai et al., 2017 and MMDetection).
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, stride: int = 1, dilation: int = 1, groups: int = 1
    ) -> None:
        super().__init__(in_channels, out_channels, **conv3x3_geometry(stride=stride, dilation=dilation, groups=groups))
        offsets = conv3x3_geometry(stride=stride, dilation=dilation, bias=True)
        self.conv_offset = nn.Conv2d(in_channels, 2 * 3 * 3, **offsets)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x, self.conv_offset(x))
