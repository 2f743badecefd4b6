"""Deformable 3x3 convolution (DCNv1) over ``torchvision.ops.DeformConv2d``."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import DeformConv2d


class DeformConv3x3(DeformConv2d):
    """A drop-in for a bias-free 3x3 ``nn.Conv2d`` that learns its sampling offsets.

    The kernel is stored as ``weight`` with the same shape as the plain convolution's, so
    checkpoints of the plain network load into it unchanged. The offset predictor
    ``conv_offset`` starts at zero, which makes the layer equal to the plain convolution until
    training moves the offsets (the initialisation of Dai et al., 2017 and MMDetection).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size=3,
            stride=stride,
            padding=dilation,
            dilation=dilation,
            groups=groups,
            bias=False,
        )
        self.conv_offset = nn.Conv2d(
            in_channels, 2 * 3 * 3, kernel_size=3, stride=stride, padding=dilation, dilation=dilation
        )
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x, self.conv_offset(x))
