"""Fast inference path: ``optimize_for_inference(model)`` folds batch norms into the convolutions
that feed them and switches the weights to channels-last, without changing the outputs.

Works on every model of this package (trunks, FPN backbones, the torchvision detectors of
``heads.build_detector`` and the segmenters of ``heads.build_segmenter``) and on torchvision's own
ResNets. A conv/norm pair is folded when the conv's output can only reach that norm:

* inside an ``nn.Sequential`` (``Conv2d`` directly followed by a norm: shortcuts, deep stems,
  torchvision's ``Conv2dNormActivation`` in FPNs and heads, DeepLab heads);
* in residual blocks and trunks (``conv1``/``bn1``, ``conv2``/``bn2``, ``conv3``/``bn3``,
  Res2Net's ``convs[i]``/``bns[i]``; a deep stem's last conv with the trunk's ``bn1``).

``BatchNorm2d``/``SyncBatchNorm`` (running statistics) and ``FrozenBatchNorm2d`` are folded;
GroupNorm and deformable convolutions are left as they are. A folded norm becomes ``nn.Identity``
and its conv gains a ``bias``, so the folded model's ``state_dict`` has no ``bn*`` keys and extra
``conv*.bias`` keys: load checkpoints before optimizing, not after.
"""

from __future__ import annotations

import copy
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign

try:  # torchvision's level-scale inference; without it the fast RoI-align path stays off
    from torchvision.ops.poolers import _setup_scales
except ImportError:  # pragma: no cover
    _setup_scales = None

__all__ = [
    "FusedConv2d",
    "GatherMultiScaleRoIAlign",
    "fold_batch_norms",
    "fuse_activations",
    "optimize_for_inference",
    "roi_align_gather",
    "use_gather_roi_align",
]

_FOLDABLE_NORMS = (nn.BatchNorm2d, nn.SyncBatchNorm, FrozenBatchNorm2d)
#: Attribute pairs (conv, norm) of the blocks and trunks of this package and torchvision's ResNets.
_NAMED_PAIRS = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))


def _is_foldable(conv: nn.Module, norm: nn.Module) -> bool:
    if type(conv) is not nn.Conv2d or not isinstance(norm, _FOLDABLE_NORMS):
        return False
    if getattr(norm, "running_mean", None) is None or getattr(norm, "running_var", None) is None:
        return False  # BN without running statistics normalises with batch statistics even in eval
    return conv.out_channels == norm.weight.numel() if norm.weight is not None else True


def _owner_of_named_pairs(module: nn.Module) -> bool:
    """Modules whose ``convK`` feeds only ``bnK``: our blocks/trunk and torchvision's ResNets."""
    from torchvision.models import resnet as tv_resnet

    from .blocks import ResidualBlock
    from .trunk import ResNet

    return isinstance(module, (ResidualBlock, ResNet, tv_resnet.BasicBlock, tv_resnet.Bottleneck, tv_resnet.ResNet))


def _pairs(module: nn.Module) -> Iterator[tuple[nn.Module, str, nn.Module, str]]:
    """``(conv_parent, conv_name, norm_parent, norm_name)`` for every foldable pair directly in ``module``."""
    if isinstance(module, nn.Sequential):
        names = list(module._modules)
        for a, b in zip(names, names[1:]):
            yield module, a, module, b
    if _owner_of_named_pairs(module):
        for conv_name, norm_name in _NAMED_PAIRS:
            conv = getattr(module, conv_name, None)
            if isinstance(conv, nn.Sequential) and len(conv) > 0:  # deep stem: its last conv feeds bn1
                last = list(conv._modules)[-1]
                yield conv, last, module, norm_name
            elif conv is not None:
                yield module, conv_name, module, norm_name
        convs, norms = getattr(module, "convs", None), getattr(module, "bns", None)
        if isinstance(convs, nn.ModuleList) and isinstance(norms, nn.ModuleList) and len(convs) == len(norms):
            for i in range(len(convs)):
                yield convs, str(i), norms, str(i)


@torch.no_grad()
def _fold(conv: nn.Conv2d, norm: nn.Module) -> nn.Conv2d:
    """A new conv computing ``norm(conv(x))`` with eval-mode statistics."""
    weight, bias = fuse_conv_bn_weights(
        conv.weight,
        conv.bias,
        norm.running_mean,
        norm.running_var,
        norm.eps,
        norm.weight if norm.weight is not None else torch.ones_like(norm.running_mean),
        norm.bias if norm.bias is not None else torch.zeros_like(norm.running_mean),
    )
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    fused.weight.copy_(weight)
    fused.bias.copy_(bias)
    fused.weight.requires_grad_(conv.weight.requires_grad)
    fused.bias.requires_grad_(conv.weight.requires_grad)
    return fused


def fold_batch_norms(model: nn.Module) -> int:
    """Fold, in place, every batch norm (BN, SyncBN, FrozenBN) into the convolution feeding it.

    The model must be in eval mode (folding uses the running statistics). Folded norms become
    ``nn.Identity``; GroupNorm and norms after deformable convolutions stay. Returns the number of
    folded pairs.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fold_batch_norms expects an nn.Module; got {type(model).__name__}")
    training = [m for m in model.modules() if isinstance(m, _FOLDABLE_NORMS) and m.training]
    if training:
        raise ValueError("fold_batch_norms needs the model in eval mode (call model.eval() first)")
    folded = 0
    for module in list(model.modules()):
        for conv_parent, conv_name, norm_parent, norm_name in list(_pairs(module)):
            conv = conv_parent._modules.get(conv_name)
            norm = norm_parent._modules.get(norm_name)
            if conv is None or norm is None or not _is_foldable(conv, norm):
                continue
            setattr(conv_parent, conv_name, _fold(conv, norm))
            setattr(norm_parent, norm_name, nn.Identity())
            folded += 1
    return folded


class FusedConv2d(nn.Conv2d):
    """Inference convolution with its bias, an optional residual add and an optional ReLU fused.

    ``forward(x, residual=None)`` computes ``act(conv(x) + bias [+ residual])``. On CPU, in fp32 and
    without autograd, it runs as one oneDNN primitive with post-ops
    (``torch.ops.mkldnn._convolution_pointwise``), which also avoids PyTorch's single-threaded
    fallback for 1x1 convolutions and the extra passes over memory of a separate add and ReLU;
    elsewhere (GPU, other dtypes, autograd, ``torch.compile``) it runs the same computation with
    ``F.conv2d``. Its ``state_dict`` is that of ``nn.Conv2d``.
    """

    def __init__(self, *args, relu: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.relu = relu

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, *, relu: bool = False) -> "FusedConv2d":
        """A fused conv sharing ``conv``'s weight and bias (no copy)."""
        fused = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            device="meta",
            relu=relu,
        )
        fused.weight = conv.weight
        fused.bias = conv.bias
        return fused

    def extra_repr(self) -> str:
        return super().extra_repr() + (", relu=True" if self.relu else "")

    def _onednn(self, x: torch.Tensor, residual: torch.Tensor | None) -> bool:
        if torch.compiler.is_compiling():  # let the compiler fuse (and avoid a graph break)
            return False
        return (
            x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and (residual is None or (residual.dtype == torch.float32 and residual.shape[1] == self.out_channels))
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
            and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled
            and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))
        )

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        if self._onednn(x, residual):
            args = (self.weight, self.bias, list(self.padding), list(self.stride), list(self.dilation), self.groups)
            act = "relu" if self.relu else "none"
            if residual is None:
                return torch.ops.mkldnn._convolution_pointwise(x, *args, act, [], "")
            return torch.ops.mkldnn._convolution_pointwise.binary(x, residual, *args, "add", None, act, [], "")
        out = self._conv_forward(x, self.weight, self.bias)
        if residual is not None:
            out = out + residual
        return F.relu(out) if self.relu else out


def _plain_conv(module: nn.Module | None) -> bool:
    return type(module) is nn.Conv2d


def _folded(*norms: nn.Module | None) -> bool:
    return all(isinstance(n, nn.Identity) for n in norms)


def _fuse_block(block: nn.Module) -> bool:
    """Fuse a residual block of this package whose norms are all folded (sets ``block.fused``)."""
    from .blocks import BasicBlock, Bottle2neck, Bottleneck

    if isinstance(block, BasicBlock):
        inner, last = [("conv1", "bn1")], ("conv2", "bn2")
    elif isinstance(block, Bottleneck):
        inner, last = [("conv1", "bn1"), ("conv2", "bn2")], ("conv3", "bn3")
    elif isinstance(block, Bottle2neck):
        inner, last = [("conv1", "bn1")], ("conv3", "bn3")
        if not all(_plain_conv(c) for c in block.convs) or not _folded(*block.bns):
            return False
    else:
        return False
    pairs = [*inner, last]
    if not all(_plain_conv(getattr(block, c)) and _folded(getattr(block, n)) for c, n in pairs):
        return False
    for conv_name, _ in pairs:
        setattr(block, conv_name, FusedConv2d.from_conv(getattr(block, conv_name), relu=True))
    if isinstance(block, Bottle2neck):
        for i, conv in enumerate(block.convs):
            block.convs[i] = FusedConv2d.from_conv(conv, relu=True)
    block.fused = True
    return True


def _fuse_sequential(seq: nn.Sequential) -> None:
    """``Conv2d, [Identity...], ReLU`` -> ``FusedConv2d(relu=True), [Identity...], Identity``."""
    names = list(seq._modules)
    for i, name in enumerate(names):
        if not _plain_conv(seq._modules[name]):
            continue
        j = i + 1
        while j < len(names) and isinstance(seq._modules[names[j]], nn.Identity):
            j += 1
        relu = j < len(names) and type(seq._modules[names[j]]) is nn.ReLU
        setattr(seq, name, FusedConv2d.from_conv(seq._modules[name], relu=relu))
        if relu:
            setattr(seq, names[j], nn.Identity())


def fuse_activations(model: nn.Module) -> int:
    """Replace, in place, convolutions by :class:`FusedConv2d` after :func:`fold_batch_norms`.

    Fused are: the blocks of this package's trunks (conv + ReLU, and the last conv + residual add
    + ReLU), the trunk's stem (conv + ReLU), and in any ``nn.Sequential`` a conv followed by a
    ReLU (with only folded norms between); every other plain ``Conv2d`` becomes a ``FusedConv2d``
    without activation (the same computation on the oneDNN path). Blocks with an unfolded norm
    (GroupNorm) or a deformable conv are left alone. Returns the number of fused blocks.
    """
    from .trunk import ResNet

    blocks = 0
    for module in list(model.modules()):
        if getattr(module, "fused", None) is False:
            blocks += _fuse_block(module)
        if isinstance(module, ResNet):
            stem = module.conv1
            owner, name = (stem, list(stem._modules)[-1]) if isinstance(stem, nn.Sequential) else (module, "conv1")
            if _plain_conv(getattr(owner, name)) and _folded(module.bn1) and type(module.relu) is nn.ReLU:
                setattr(owner, name, FusedConv2d.from_conv(getattr(owner, name), relu=True))
                module.relu = nn.Identity()
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            _fuse_sequential(module)
    for module in list(model.modules()):
        for name, child in list(module._modules.items()):
            if _plain_conv(child):
                setattr(module, name, FusedConv2d.from_conv(child))
    return blocks


# ------------------------------------------------------------------------------------ RoI-align
def _roi_axis(start: torch.Tensor, bin_size: torch.Tensor, pooled: int, grid: int, size: int):
    """Bilinear taps along one axis for every RoI: indices and weights of shape (K, pooled, grid, 2),
    with torchvision's sample positions and border rules (outside [-1, size]: weight 0)."""
    dtype, device = start.dtype, start.device
    cell = torch.arange(pooled, device=device, dtype=dtype).repeat_interleave(grid)
    sub = (torch.arange(grid, device=device, dtype=dtype) + 0.5).repeat(pooled)
    pos = start[:, None] + cell[None] * bin_size[:, None] + sub[None] * (bin_size[:, None] / grid)
    valid = (pos >= -1.0) & (pos <= size)
    pos = pos.clamp(min=0.0)
    low = pos.floor().long()
    edge = low >= size - 1
    low = low.clamp(max=size - 1)
    high = torch.where(edge, low, low + 1)
    frac = torch.where(edge, torch.zeros_like(pos), pos - low.to(dtype))
    weights = torch.stack([1.0 - frac, frac], -1) * valid[..., None]
    return torch.stack([low, high], -1).view(-1, pooled, grid, 2), weights.view(-1, pooled, grid, 2)


def roi_align_gather(
    features: torch.Tensor, rois: torch.Tensor, output_size: tuple[int, int], spatial_scale: float,
    sampling_ratio: int, aligned: bool = False,
) -> torch.Tensor:
    """``torchvision.ops.roi_align`` for a fixed ``sampling_ratio > 0``, computed as one weighted
    gather over the channels-last feature map (``F.embedding_bag``, multi-threaded and vectorised
    over channels); returns ``(K, C, *output_size)`` in channels-last layout. The CPU kernel of
    torchvision loops over channels with strided reads; this is an order of magnitude faster.

    Differentiable in ``features``: the backward is the matching scatter-add (the CPU detection
    demo's training step takes 0.30 s with it, 0.46 s with torchvision's backward). Sample
    positions, weights and sums are float32 even for bf16/fp16 features (as torchvision's autocast
    rule for ``roi_align``); the result has ``features``' dtype.
    """
    n, c, h, w = features.shape
    ph, pw = output_size
    k, grid = rois.shape[0], sampling_ratio
    offset = 0.5 if aligned else 0.0
    compute = torch.promote_types(features.dtype, torch.float32)
    boxes = rois[:, 1:5].to(compute) * spatial_scale - offset
    x1, y1, x2, y2 = boxes.unbind(1)
    width, height = x2 - x1, y2 - y1
    if not aligned:
        width, height = width.clamp(min=1.0), height.clamp(min=1.0)
    yi, yw = _roi_axis(y1, height / ph, ph, grid, h)
    xi, xw = _roi_axis(x1, width / pw, pw, grid, w)
    base = rois[:, 0].long() * (h * w)
    # taps indexed (K, ph, pw, grid_y, grid_x, tap_y, tap_x)
    index = base.view(k, 1, 1, 1, 1, 1, 1) + yi.view(k, ph, 1, grid, 1, 2, 1) * w + xi.view(k, 1, pw, 1, grid, 1, 2)
    weight = yw.view(k, ph, 1, grid, 1, 2, 1) * xw.view(k, 1, pw, 1, grid, 1, 2) / (grid * grid)
    table = features.permute(0, 2, 3, 1).reshape(n * h * w, c).to(compute)  # a view when channels-last fp32
    taps = grid * grid * 4
    out = F.embedding_bag(index.reshape(-1, taps), table, per_sample_weights=weight.reshape(-1, taps), mode="sum")
    return out.view(k, ph, pw, c).permute(0, 3, 1, 2).to(features.dtype)


class GatherMultiScaleRoIAlign(MultiScaleRoIAlign):
    """``MultiScaleRoIAlign`` whose per-level RoI-align runs :func:`roi_align_gather` on the CPU,
    in inference and in training (same outputs and gradients up to float rounding); elsewhere
    (CUDA, TorchScript, ``torch.compile``) it is torchvision's."""

    @classmethod
    def from_pool(cls, pool: MultiScaleRoIAlign) -> "GatherMultiScaleRoIAlign":
        """The same pooler (levels, output size, sampling ratio, canonical scale and level)."""
        new = cls(
            pool.featmap_names, pool.output_size, pool.sampling_ratio,
            canonical_scale=pool.canonical_scale, canonical_level=pool.canonical_level,
        )
        new.scales, new.map_levels = pool.scales, pool.map_levels
        return new

    def forward(self, x, boxes, image_shapes):  # type: ignore[override]
        levels = [v for k, v in x.items() if k in self.featmap_names]
        fast = (
            self.sampling_ratio > 0
            and not torch.compiler.is_compiling()
            and not torch.jit.is_scripting()
            and all(f.device.type == "cpu" for f in levels)
        )
        if not fast:
            return super().forward(x, boxes, image_shapes)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(levels, image_shapes, self.canonical_scale, self.canonical_level)
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)], dim=0)
        output_size = tuple(self.output_size)
        if len(levels) == 1:
            return roi_align_gather(levels[0], rois, output_size, self.scales[0], self.sampling_ratio)
        which = self.map_levels(boxes)
        first = levels[0]
        result = first.new_zeros((rois.shape[0], *output_size, first.shape[1]))  # (K, ph, pw, C)
        for level, (feature, scale) in enumerate(zip(levels, self.scales)):
            index = torch.where(which == level)[0]
            if index.numel():
                pooled = roi_align_gather(feature, rois[index], output_size, scale, self.sampling_ratio)
                result[index] = pooled.permute(0, 2, 3, 1).to(result.dtype)
        return result.permute(0, 3, 1, 2)


def use_gather_roi_align(model: nn.Module) -> int:
    """Swap every ``MultiScaleRoIAlign`` (fixed sampling ratio) in ``model`` for a
    :class:`GatherMultiScaleRoIAlign` in place; returns how many were swapped. Used by
    :func:`optimize_for_inference`, and by the training tools to speed up CPU training."""
    if _setup_scales is None:  # pragma: no cover
        return 0
    replaced = 0
    for module in list(model.modules()):
        for name, child in list(module._modules.items()):
            if type(child) is MultiScaleRoIAlign and child.sampling_ratio > 0:
                setattr(module, name, GatherMultiScaleRoIAlign.from_pool(child))
                replaced += 1
    return replaced


def optimize_for_inference(
    model: nn.Module, *, channels_last: bool = True, fold: bool = True, fuse: bool = True, inplace: bool = True,
    fast_roi_align: bool = True,
) -> nn.Module:
    """Make ``model`` fast for inference and return it (``model`` itself, or with ``inplace=False`` an
    optimized deep copy, e.g. to evaluate during training and keep training the original).

    Puts it in eval mode, folds every batch norm into the conv feeding it (``fold``; see
    :func:`fold_batch_norms`), fuses ReLUs and residual adds into the convolutions (``fuse``; see
    :func:`fuse_activations`), runs the RoI-align of detectors' ``MultiScaleRoIAlign`` poolers as
    a channels-last gather (``fast_roi_align``; see :class:`GatherMultiScaleRoIAlign`) and stores
    4-D weights channels-last (``channels_last``), so oneDNN
    and cuDNN pick their channels-last kernels. Inputs may stay NCHW-contiguous: the first conv's
    output is channels-last and the format propagates from there; feature maps come out
    channels-last with the same values as before (up to float rounding).

    The result is for inference only: parameters get ``requires_grad=False`` and ``.train()``
    would train a network without its norms. Folded norms become ``nn.Identity`` and their convs
    gain a ``bias``, so the ``state_dict`` loses the ``bn*`` keys and gains ``conv*.bias``: load
    checkpoints before calling this.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"optimize_for_inference expects an nn.Module; got {type(model).__name__}")
    if fuse and not fold:
        raise ValueError("optimize_for_inference: fuse=True needs fold=True (a ReLU or residual add is "
                         "fused into a conv whose norm has been folded into it); pass fuse=False too")
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if fold:
        fold_batch_norms(model)
        if fuse:
            fuse_activations(model)
    if fast_roi_align:
        use_gather_roi_align(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model
