"""Normalisation for DeepLab heads, including the batch-of-one-safe BN of ASPP's pooling branch."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class FallbackBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` that normalises with its running statistics when a training batch holds a
    single value per channel.

    ASPP's image-pooling branch sees a 1x1 map per image, so with a batch of one image plain BN
    has one value per channel and cannot compute a variance (PyTorch raises). In that case this
    layer behaves as in eval mode: it uses, and does not update, the running statistics. With two
    or more values per channel it is exactly ``nn.BatchNorm2d``, and its parameters and buffers are
    BN's, so torchvision's checkpoints load unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.dim() == 4 and x.shape[0] * x.shape[2] * x.shape[3] == 1 and self.running_mean is not None:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


def conv_norm_act(
    in_channels: int, out_channels: int, kernel_size: int = 1, *, dilation: int = 1, norm: type[nn.Module] = nn.BatchNorm2d
) -> nn.Sequential:
    """``conv (no bias) -> norm -> ReLU`` with "same" padding; keys ``0.weight``, ``1.*``."""
    padding = dilation * (kernel_size - 1) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False),
        norm(out_channels),
        nn.ReLU(inplace=True),
    )
