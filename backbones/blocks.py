"""Residual blocks of the ResNet family: ``BasicBlock``, ``Bottleneck`` (ResNet/ResNeXt/Wide) and
``Bottle2neck`` (Res2Net), plus the projection shortcut they share.

Attribute names (``conv1``, ``bn1``, ..., ``convs``, ``bns``, ``downsample``) are those of torchvision
and timm, so their checkpoints load key for key.

Each block has one ``forward``, for training and inference alike. ``optimize_for_inference``
(``backbones.inference``) swaps modules inside it: each conv becomes a ``FusedConv2d`` with its norm
folded in and its ReLU fused (the norms and ``relu`` become ``nn.Identity``) and sets ``fused``;
the two steps that then differ are the shared helpers :meth:`ResidualBlock.add_shortcut` (the last
conv also does the shortcut add and ReLU) and :func:`concat_splits` (Res2Net without ``torch.cat``).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence, TypedDict

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import StochasticDepth

from .compat import forward_hooks_observe
from .dcn import DeformConv3x3, conv3x3_geometry

try:
    from typing import Unpack
except ImportError:  # Python 3.10
    from typing_extensions import Unpack

NormFactory = Callable[[int], nn.Module]


def conv3x3(
    in_channels: int,
    out_channels: int,
    *,
    stride: int = 1,
    dilation: int = 1,
    groups: int = 1,
    deformable: bool = False,
) -> nn.Module:
    """3x3 convolution without bias whose padding keeps the size (divided by ``stride``)."""
    if deformable:
        return DeformConv3x3(in_channels, out_channels, stride=stride, dilation=dilation, groups=groups)
    return nn.Conv2d(in_channels, out_channels, **conv3x3_geometry(stride=stride, dilation=dilation, groups=groups))


def conv1x1(in_channels: int, out_channels: int, *, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution without bias."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)


class AvgPool2x2Same(nn.Module):
    """2x2 average pool at stride 1 with one zero row/column padded bottom/right.

    This is what timm's ``-d`` ResNets put in the average-pool shortcut of a dilated stage, where
    the stride-2 pool would otherwise be; reproducing it keeps those models exact at output stride
    16 and 8.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.pad(x, (0, 1, 0, 1)), kernel_size=2, stride=1)


def make_shortcut(
    in_channels: int,
    out_channels: int,
    *,
    stride: int,
    dilation: int,
    avg_down: bool,
    norm: NormFactory,
) -> nn.Sequential:
    """Projection shortcut: strided 1x1 conv + norm, or (``avg_down``, the "-D" tweak of He et al.,
    2019) average pool, then 1x1 conv + norm."""
    if not avg_down:
        return nn.Sequential(conv1x1(in_channels, out_channels, stride=stride), norm(out_channels))
    if stride == 1 and dilation == 1:
        pool: nn.Module = nn.Identity()
    elif dilation > 1:
        pool = AvgPool2x2Same()
    else:
        pool = nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False)
    return nn.Sequential(pool, conv1x1(in_channels, out_channels), norm(out_channels))


class BlockOptions(TypedDict, total=False):
    """Keyword options every block takes besides its own (see :class:`ResidualBlock`)."""

    stride: int
    dilation: int
    first_dilation: int | None
    downsample: nn.Module | None
    drop_path: float


class ResidualBlock(nn.Module):
    """Base of every block: ``relu(drop_path(branch(x)) + shortcut(x))``.

    Subclasses build the branch in ``__init__`` and write it once in ``forward``, ending with
    :meth:`add_shortcut`; they name the norm layer that ends the branch (``last_norm``), which
    ``zero_init_last`` zeroes so that the block starts as the identity (Goyal et al., 2017).

    Args (:class:`BlockOptions`, the same for every block):
        stride: stride of the block (on its strided conv, and of ``downsample``).
        dilation: dilation of the 3x3 convs.
        first_dilation: dilation of the first (strided) 3x3 conv, default ``dilation``; the
            previous stage's dilation in the first block of a newly dilated stage, as in timm.
        downsample: the projection shortcut (:func:`make_shortcut`), or ``None`` for the identity.
        drop_path: stochastic-depth rate of the branch (per sample, training only).
    """

    expansion: int = 1
    last_norm_name: str = ""
    #: Set by ``backbones.optimize_for_inference`` once the convs are ``FusedConv2d`` (norms folded,
    #: ReLUs and the residual add fused): see :meth:`add_shortcut`.
    fused: bool = False

    def __init__(
        self,
        *,
        stride: int = 1,
        dilation: int = 1,
        first_dilation: int | None = None,
        downsample: nn.Module | None = None,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.stride = stride
        self.dilation = dilation
        self.first_dilation = first_dilation or dilation
        self.downsample = downsample
        self.drop_path = StochasticDepth(drop_path, "row") if drop_path > 0 else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        """The identity, or the projection ``downsample(x)``."""
        return x if self.downsample is None else self.downsample(x)

    def add_shortcut(
        self, conv: nn.Module, norm: nn.Module, x: torch.Tensor, shortcut: torch.Tensor, *, owns_input: bool = False
    ) -> torch.Tensor:
        """The end of every block: ``relu(drop_path(norm(conv(x))) + shortcut)``. In a fused block
        ``conv`` is a ``FusedConv2d`` with ``norm`` folded in, which adds and applies the ReLU itself
        (inference only: no stochastic depth), writing into ``shortcut`` when nothing else holds it:
        a projection's fresh output, or the block's input when the caller says it owns it
        (``owns_input``, from ``FusedStage``)."""
        if self.fused:
            private = owns_input if self.downsample is None else not forward_hooks_observe(self.downsample)
            return conv(x, shortcut, accumulate=private)
        out = self.drop_path(norm(conv(x)))
        out += shortcut  # in place, as torchvision: one fewer pass over memory
        return self.relu(out)

    @property
    def last_norm(self) -> nn.Module:
        return getattr(self, self.last_norm_name)

    @torch.no_grad()
    def zero_init_last(self) -> None:
        """Zero the scale of the last norm layer of the residual branch (any norm kind)."""
        self.last_norm.weight.zero_()


class BasicBlock(ResidualBlock):
    """Two 3x3 convolutions (ResNet-18/34). The first carries the stride."""

    expansion = 1
    last_norm_name = "bn2"

    def __init__(
        self, in_channels: int, planes: int, *, norm: NormFactory = nn.BatchNorm2d, **options: Unpack[BlockOptions]
    ) -> None:
        super().__init__(**options)
        self.conv1 = conv3x3(in_channels, planes, stride=self.stride, dilation=self.first_dilation)
        self.bn1 = norm(planes)
        self.conv2 = conv3x3(planes, planes, dilation=self.dilation)
        self.bn2 = norm(planes)

    def forward(self, x: torch.Tensor, *, owns_input: bool = False) -> torch.Tensor:
        shortcut = self.shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.add_shortcut(self.conv2, self.bn2, out, shortcut, owns_input=owns_input)


class Bottleneck(ResidualBlock):
    """1x1 reduce, 3x3 (grouped for ResNeXt, optionally deformable), 1x1 expand.

    ``style="pytorch"`` puts the stride on the 3x3 (ResNet v1.5, torchvision); ``style="caffe"`` on
    the first 1x1 (the original paper, MSRA and detectron2 weights).
    """

    expansion = 4
    last_norm_name = "bn3"

    def __init__(
        self, in_channels: int, planes: int, *, norm: NormFactory = nn.BatchNorm2d, groups: int = 1,
        base_width: int = 64, style: str = "pytorch", deformable: bool = False, **options: Unpack[BlockOptions],
    ) -> None:
        super().__init__(**options)
        width = int(planes * (base_width / 64.0)) * groups
        stride_1x1, stride_3x3 = (self.stride, 1) if style == "caffe" else (1, self.stride)
        self.conv1 = conv1x1(in_channels, width, stride=stride_1x1)
        self.bn1 = norm(width)
        self.conv2 = conv3x3(
            width, width, stride=stride_3x3, dilation=self.first_dilation, groups=groups, deformable=deformable
        )
        self.bn2 = norm(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = norm(planes * self.expansion)

    def forward(self, x: torch.Tensor, *, owns_input: bool = False) -> torch.Tensor:
        shortcut = self.shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.add_shortcut(self.conv3, self.bn3, out, shortcut, owns_input=owns_input)


class Bottle2neck(ResidualBlock):
    """Res2Net block (Gao et al., 2019): the 3x3 stage works on ``scale`` channel splits of width
    ``base_width * planes / 64``; each split after the first adds the previous split's output
    before its conv (hierarchical residuals). In a stage's first block every split is convolved on
    its own and the last split is average-pooled instead, as in the official release and timm.
    """

    expansion = 4
    last_norm_name = "bn3"

    def __init__(
        self, in_channels: int, planes: int, *, norm: NormFactory = nn.BatchNorm2d, groups: int = 1,
        base_width: int = 26, scale: int = 4, deformable: bool = False, **options: Unpack[BlockOptions],
    ) -> None:
        super().__init__(**options)
        self.scale = scale
        self.width = int(math.floor(planes * (base_width / 64.0))) * groups
        self.is_first = self.stride > 1 or self.downsample is not None
        self.conv1 = conv1x1(in_channels, self.width * scale)
        self.bn1 = norm(self.width * scale)
        self.convs = nn.ModuleList(
            conv3x3(
                self.width, self.width, stride=self.stride, dilation=self.first_dilation, groups=groups,
                deformable=deformable,
            )
            for _ in range(max(1, scale - 1))
        )
        self.bns = nn.ModuleList(norm(self.width) for _ in range(max(1, scale - 1)))
        # count_include_pad=True as in the released weights' training code.
        self.pool = nn.AvgPool2d(kernel_size=3, stride=self.stride, padding=1) if self.is_first else None
        self.conv3 = conv1x1(self.width * scale, planes * self.expansion)
        self.bn3 = norm(planes * self.expansion)

    def forward(self, x: torch.Tensor, *, owns_input: bool = False) -> torch.Tensor:
        shortcut = self.shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))
        splits = torch.split(out, self.width, dim=1)
        outputs = []
        carried = splits[0]
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            carried = splits[i] if i == 0 or self.is_first else carried + splits[i]
            carried = self.relu(bn(conv(carried)))
            outputs.append(carried)
        if self.scale > 1:
            outputs.append(self.pool(splits[-1]) if self.pool is not None else splits[-1])
        merged = concat_splits(outputs, out) if self.fused else torch.cat(outputs, dim=1)
        return self.add_shortcut(self.conv3, self.bn3, merged, shortcut, owns_input=owns_input)


def concat_splits(parts: Sequence[torch.Tensor], source: torch.Tensor) -> torch.Tensor:
    """``torch.cat(parts, dim=1)`` for a fused (inference) Res2Net block, where ``source`` is the
    first 1x1 conv's output that the parts were computed from.

    Without autograd, and when the parts have ``source``'s size, each part is written into its
    channel slot of ``source`` itself (every split has been read by then), so a part that already is
    its slot (the last split of a non-first block) is never copied; otherwise (a strided first
    block) the parts go into one preallocated buffer.
    """
    first = parts[0]
    in_place = first.shape[-2:] == source.shape[-2:] and not (torch.is_grad_enabled() and source.requires_grad)
    if in_place:
        merged = source
    else:
        shape = (first.shape[0], source.shape[1], *first.shape[-2:])
        merged = torch.empty(shape, dtype=first.dtype, device=first.device, memory_format=_memory_format(first))
    start = 0
    for part in parts:
        slot = merged[:, start : start + part.shape[1]]
        if not (in_place and part.data_ptr() == slot.data_ptr()):
            slot.copy_(part)
        start += part.shape[1]
    return merged


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format
