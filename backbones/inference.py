"""Fast inference path: ``optimize_for_inference(model)`` folds batch norms into the convolutions
that feed them, fuses ReLUs and residual adds into the convolutions and switches the weights to
channels-last, without changing the outputs. The fused convolutions reorder their weights into
oneDNN's layout once, and a block's residual add writes into the shortcut's memory when nothing else
holds it (:class:`FusedStage`); plain linear layers run as oneDNN inner products.

Works on the models of this package other than detectors (trunks, FPN backbones, the segmenters
of ``heads.build_segmenter``) and on torchvision's own ResNets; detectors go through
``heads.optimize_for_inference``, which adds their RoI-align on top of :func:`optimize_layers`. A
conv/norm pair is folded when the conv's output can only reach that norm:

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
from collections import OrderedDict
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.models import resnet as tv_resnet
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign

from .blocks import BasicBlock, Bottle2neck, Bottleneck, ResidualBlock
from .compat import (
    forward_hooks_observe,
    has_onednn_linear,
    has_onednn_pointwise,
    named_child_slots,
    onednn_bf16_supported,
    onednn_conv_pointwise,
    onednn_linear,
    onednn_prepack_weight,
)
from .low_precision import check_inference_dtype, run_in_dtype
from .trunk import ResNet
from .winograd import winograd_conv3x3, winograd_pays, winograd_weight

__all__ = [
    "FusedConv2d",
    "FusedStage",
    "OneDnnLinear",
    "fold_batch_norms",
    "fuse_activations",
    "optimize_for_inference",
    "optimize_layers",
    "use_winograd",
]

_FOLDABLE_NORMS = (nn.BatchNorm2d, nn.SyncBatchNorm, FrozenBatchNorm2d)
#: Attribute pairs (conv, norm) of the blocks and trunks of this package and torchvision's ResNets.
_NAMED_PAIRS = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))
#: Modules whose ``convK`` feeds only ``bnK``: our blocks and trunk, and torchvision's ResNets.
_NAMED_PAIR_OWNERS = (ResidualBlock, ResNet, tv_resnet.BasicBlock, tv_resnet.Bottleneck, tv_resnet.ResNet)
#: Blocks whose ``forward`` runs fused once their modules are swapped (``ResidualBlock.add_shortcut``).
_FUSABLE_BLOCKS = (BasicBlock, Bottleneck, Bottle2neck)
#: Whole detectors and their RoI poolers, whose inference path is ``heads.optimize_for_inference``.
_DETECTOR_PARTS = (GeneralizedRCNN, RetinaNet, FCOS, MultiScaleRoIAlign)


def _onednn_runs(dtype: torch.dtype) -> bool:
    """Whether the oneDNN paths of :class:`FusedConv2d` and :class:`OneDnnLinear` run ``dtype`` here:
    fp32 always, bf16 where the CPU supports it (elsewhere PyTorch's oneDNN ops refuse bf16, and the
    layers fall back to ``F.conv2d``/``F.linear``)."""
    return dtype == torch.float32 or (dtype == torch.bfloat16 and onednn_bf16_supported())


def _conv_like(cls: type[nn.Conv2d], conv: nn.Conv2d, **kwargs: Any) -> nn.Conv2d:
    """A new ``cls`` with ``conv``'s geometry (channels, kernel, stride, padding, dilation, groups)."""
    return cls(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        padding_mode=conv.padding_mode,
        **kwargs,
    )


# ------------------------------------------------------------------------------------- folding
def _is_foldable(conv: nn.Module, norm: nn.Module) -> bool:
    if type(conv) is not nn.Conv2d or not isinstance(norm, _FOLDABLE_NORMS):
        return False
    if getattr(norm, "running_mean", None) is None or getattr(norm, "running_var", None) is None:
        return False  # BN without running statistics normalises with batch statistics even in eval
    return conv.out_channels == norm.weight.numel() if norm.weight is not None else True


def _pairs(module: nn.Module) -> Iterator[tuple[nn.Module, str, nn.Module, str]]:
    """``(conv_parent, conv_name, norm_parent, norm_name)`` for every foldable pair directly in ``module``."""
    if isinstance(module, nn.Sequential):
        names = [name for name, _ in named_child_slots(module)]
        for a, b in zip(names, names[1:]):
            yield module, a, module, b
    if isinstance(module, _NAMED_PAIR_OWNERS):
        for conv_name, norm_name in _NAMED_PAIRS:
            conv = getattr(module, conv_name, None)
            if isinstance(conv, nn.Sequential) and len(conv) > 0:  # deep stem: its last conv feeds bn1
                yield conv, _last_slot(conv), module, norm_name
            elif conv is not None:
                yield module, conv_name, module, norm_name
        convs, norms = getattr(module, "convs", None), getattr(module, "bns", None)
        if isinstance(convs, nn.ModuleList) and isinstance(norms, nn.ModuleList) and len(convs) == len(norms):
            for i in range(len(convs)):
                yield convs, str(i), norms, str(i)


def _last_slot(seq: nn.Sequential) -> str:
    return named_child_slots(seq)[-1][0]


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
    fused = _conv_like(nn.Conv2d, conv, bias=True, device=conv.weight.device, dtype=conv.weight.dtype)
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
            conv = getattr(conv_parent, conv_name, None)
            norm = getattr(norm_parent, norm_name, None)
            if conv is None or norm is None or not _is_foldable(conv, norm):
                continue
            setattr(conv_parent, conv_name, _fold(conv, norm))
            setattr(norm_parent, norm_name, nn.Identity())
            folded += 1
    return folded


# -------------------------------------------------------------------------------------- fusion
class FusedConv2d(nn.Conv2d):
    """Inference convolution with its bias, an optional residual add and an optional ReLU fused.

    ``forward(x, residual=None)`` computes ``act(conv(x) + bias [+ residual])``. On CPU, in fp32 or
    bf16 and without autograd, it runs as one oneDNN primitive with post-ops
    (``torch.ops.mkldnn._convolution_pointwise``, see ``backbones.compat``), which also avoids
    PyTorch's single-threaded fallback for 1x1 convolutions and the extra passes over memory of a
    separate add and ReLU; elsewhere (GPU, other dtypes, autograd, ``torch.compile``) it runs the
    same computation with ``F.conv2d``. Its ``state_dict`` is that of ``nn.Conv2d``.
    """

    def __init__(self, *args: Any, relu: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.relu = relu
        self.winograd = False
        self._packed: tuple[tuple[int, ...], Any] | None = None
        self._winograd: tuple[tuple[int, ...], Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles leave the packed weights out (they are rebuilt on first use)."""
        return {**super().__getstate__(), "_packed": None, "_winograd": None}

    def _cached(self, slot: str, make: Callable[[], Any]) -> Any:
        """``make()``, kept in ``slot`` until the weight or bias is replaced or changed in place. A
        weight made under ``torch.inference_mode`` has no version counter to tell an in-place change:
        then ``make()`` runs on every call."""
        if self.weight.is_inference():
            return make()
        key = tuple((p.data_ptr(), p._version) for p in (self.weight, self.bias) if p is not None)
        cached = self.__dict__.get(slot)  # absent in a FusedConv2d pickled by an older version
        if cached is None or cached[0] != key:
            cached = (key, make())
            self.__dict__[slot] = cached
        return cached[1]

    def _onednn_weight(self, x: torch.Tensor) -> torch.Tensor:
        """The weight in oneDNN's blocked layout, reordered on the first call instead of on every
        call (ResNet-50 at batch 8: 53 weight reorders, 6-10% of a forward pass, AVX512-BF16). Costs a
        second copy of the weights. (A weight made under ``torch.inference_mode`` is used as it is.)"""
        if self.weight.is_inference():
            return self.weight
        return self._cached("_packed", lambda: onednn_prepack_weight(
            self.weight, padding=self.padding, stride=self.stride, dilation=self.dilation, groups=self.groups,
            input_shape=x.shape))

    def _use_winograd(self, x: torch.Tensor, residual: torch.Tensor | None) -> bool:
        enabled = self.__dict__.get("winograd", False)  # absent in a FusedConv2d pickled by an older version
        return (enabled and residual is None and x.dtype == torch.float32 and x.dim() == 4
                and winograd_pays(x, self.in_channels, self.out_channels))

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, *, relu: bool = False) -> "FusedConv2d":
        """A fused conv sharing ``conv``'s weight and bias (no copy)."""
        fused = _conv_like(cls, conv, bias=conv.bias is not None, device="meta", relu=relu)
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
            and _onednn_runs(x.dtype)
            and self.weight.dtype == x.dtype
            and (residual is None or (residual.dtype == x.dtype and residual.shape[1] == self.out_channels))
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
            and has_onednn_pointwise()
            and torch.backends.mkldnn.enabled
            and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))
        )

    @staticmethod
    def _may_accumulate(residual: torch.Tensor) -> bool:
        """The in-place sum needs a dense residual that is not a view of another tensor."""
        return (residual._base is None and not residual.requires_grad
                and (residual.is_contiguous() or residual.is_contiguous(memory_format=torch.channels_last)))

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, residual: torch.Tensor | None = None, *, accumulate: bool = False
    ) -> torch.Tensor:
        """``accumulate=True``: the caller owns ``residual`` and no longer needs it, so the oneDNN
        path may write the result into it (the returned tensor is then ``residual``)."""
        if self._onednn(x, residual):
            if self._use_winograd(x, residual):
                weight, bias = self._cached(
                    "_winograd", lambda: winograd_weight(self.weight, self.bias, input_shape=x.shape))
                return winograd_conv3x3(x, weight, bias, relu=self.relu)
            return onednn_conv_pointwise(
                x, self._onednn_weight(x), self.bias, padding=self.padding, stride=self.stride,
                dilation=self.dilation, groups=self.groups, relu=self.relu, residual=residual,
                accumulate=accumulate and residual is not None and self._may_accumulate(residual),
            )
        out = super().forward(x)
        if residual is not None:
            out = out + residual
        return F.relu(out) if self.relu else out


class OneDnnLinear(nn.Linear):
    """``nn.Linear`` run as oneDNN's inner product on the CPU in fp32 or bf16 without autograd, elsewhere as
    ``F.linear``. The detectors' box-head ``fc6`` (1,000 RoIs x 12,544 -> 1,024) takes 56 ms this
    way against 118 ms through ``addmm`` (MKL), on a 2-core AMD EPYC with AVX512-BF16. Its
    ``state_dict`` is that of ``nn.Linear``."""

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "OneDnnLinear":
        """A copy sharing ``linear``'s weight and bias."""
        fast = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        fast.weight, fast.bias = linear.weight, linear.bias
        return fast

    def forward(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        """``weight``: use this weight (``self.weight``'s shape; e.g. with its input features permuted)
        in place of ``self.weight``."""
        weight = self.weight if weight is None else weight
        if (x.device.type == "cpu" and _onednn_runs(x.dtype) and weight.dtype == x.dtype
                and x.dim() >= 2 and not torch.compiler.is_compiling() and has_onednn_linear()
                and torch.backends.mkldnn.enabled
                and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))):
            return onednn_linear(x, weight, self.bias)
        return F.linear(x, weight, self.bias)


class FusedStage(nn.Sequential):
    """A stage of fused residual blocks. Each block after the first gets, as its input, the previous
    block's output, which nothing else holds; it may then write its own output into that memory
    (``owns_input``, see ``ResidualBlock.add_shortcut``), unless a forward hook could have kept it.
    Its ``state_dict`` and indexing are those of the ``nn.Sequential`` it replaces."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        previous: nn.Module | None = None
        for block in self:
            x = block(x, owns_input=previous is not None and not forward_hooks_observe(previous))
            previous = block
        return x


def _fuse_stages(model: nn.Module) -> None:
    """``nn.Sequential`` stages made only of fused blocks become :class:`FusedStage`."""
    for module in list(model.modules()):
        for name, child in named_child_slots(module):
            if (type(child) is nn.Sequential and len(child) > 1
                    and all(isinstance(block, ResidualBlock) and block.fused for block in child)):
                setattr(module, name, FusedStage(OrderedDict(named_child_slots(child))))


def _plain_conv(module: nn.Module | None) -> bool:
    return type(module) is nn.Conv2d


def _folded(norm: nn.Module | None) -> bool:
    return isinstance(norm, nn.Identity)


def _fuse_block(block: ResidualBlock) -> bool:
    """Fuse a residual block whose convs are plain and whose norms are all folded: every conv of its
    branch gets its ReLU (the last one also the shortcut add, see ``ResidualBlock.add_shortcut``)."""
    pairs = list(_pairs(block))
    for conv_parent, conv_name, norm_parent, norm_name in pairs:
        if not (_plain_conv(getattr(conv_parent, conv_name)) and _folded(getattr(norm_parent, norm_name, None))):
            return False
    for conv_parent, conv_name, _, _ in pairs:
        setattr(conv_parent, conv_name, FusedConv2d.from_conv(getattr(conv_parent, conv_name), relu=True))
    block.relu = nn.Identity()
    block.fused = True
    return True


def _fuse_stem(trunk: ResNet) -> None:
    """The stem's last conv gets the ReLU after the trunk's (folded) ``bn1``."""
    stem = trunk.conv1
    owner, name = (stem, _last_slot(stem)) if isinstance(stem, nn.Sequential) else (trunk, "conv1")
    if _plain_conv(getattr(owner, name)) and _folded(trunk.bn1) and type(trunk.relu) is nn.ReLU:
        setattr(owner, name, FusedConv2d.from_conv(getattr(owner, name), relu=True))
        trunk.relu = nn.Identity()


def _fuse_sequential(seq: nn.Sequential) -> None:
    """``Conv2d, [Identity...], ReLU`` -> ``FusedConv2d(relu=True), [Identity...], Identity``."""
    slots = named_child_slots(seq)
    for i, (name, child) in enumerate(slots):
        if not _plain_conv(child):
            continue
        j = i + 1
        while j < len(slots) and isinstance(slots[j][1], nn.Identity):
            j += 1
        relu = j < len(slots) and type(slots[j][1]) is nn.ReLU
        setattr(seq, name, FusedConv2d.from_conv(child, relu=relu))
        if relu:
            setattr(seq, slots[j][0], nn.Identity())


def fuse_activations(model: nn.Module) -> int:
    """Replace, in place, convolutions by :class:`FusedConv2d` after :func:`fold_batch_norms`.

    Fused are: the blocks of this package's trunks (conv + ReLU, and the last conv + residual add
    + ReLU), the trunk's stem (conv + ReLU), and in any ``nn.Sequential`` a conv followed by a
    ReLU (with only folded norms between); every other plain ``Conv2d`` becomes a ``FusedConv2d``
    without activation (the same computation on the oneDNN path), and every plain ``nn.Linear`` an
    :class:`OneDnnLinear`. Stages made of fused blocks become :class:`FusedStage`. Blocks with an
    unfolded norm (GroupNorm) or a deformable conv are left alone. Returns the number of fused blocks.
    """
    blocks = 0
    for module in list(model.modules()):
        if isinstance(module, _FUSABLE_BLOCKS) and not module.fused:
            blocks += _fuse_block(module)
        if isinstance(module, ResNet):
            _fuse_stem(module)
    _fuse_stages(model)
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            _fuse_sequential(module)
    for module in list(model.modules()):
        for name, child in named_child_slots(module):
            if _plain_conv(child):
                setattr(module, name, FusedConv2d.from_conv(child))
            elif type(child) is nn.Linear:
                setattr(module, name, OneDnnLinear.from_linear(child))
    return blocks


def use_winograd(model: nn.Module, enabled: bool = True) -> int:
    """Let every :class:`FusedConv2d` of ``model`` that is a plain 3x3 convolution (stride 1, padding
    1, no dilation or groups) run as a Winograd convolution where that is faster: with enough
    channels, on big enough inputs, for this CPU (``backbones.winograd.winograd_pays``, checked on
    each call); with ``enabled=False``, none. Returns how many convolutions may."""
    count = 0
    for conv in model.modules():
        if isinstance(conv, FusedConv2d):
            conv.winograd = enabled and (
                conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1)
                and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros"
            )
            count += conv.winograd
    return count


# ------------------------------------------------------------------------------------- entries
def optimize_layers(
    model: nn.Module, *, channels_last: bool = True, fold: bool = True, fuse: bool = True, inplace: bool = True,
    winograd: bool = True,
) -> nn.Module:
    """The layer-level steps of :func:`optimize_for_inference` on any module, detectors included
    (``heads.optimize_for_inference`` runs this, then swaps the detectors' RoI-align)."""
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
            use_winograd(model, winograd)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def optimize_for_inference(
    model: nn.Module, *, channels_last: bool = True, fold: bool = True, fuse: bool = True, inplace: bool = True,
    winograd: bool = True, dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """Make ``model`` fast for inference and return it (``model`` itself, or with ``inplace=False`` an
    optimized deep copy, e.g. to evaluate during training and keep training the original).

    Puts it in eval mode, folds every batch norm into the conv feeding it (``fold``; see
    :func:`fold_batch_norms`), fuses ReLUs and residual adds into the convolutions (``fuse``; see
    :func:`fuse_activations`) and stores 4-D weights channels-last (``channels_last``), so oneDNN
    and cuDNN pick their channels-last kernels. Inputs may stay NCHW-contiguous: the first conv's
    output is channels-last and the format propagates from there; feature maps come out
    channels-last with the same values as before (up to float rounding).

    For trunks, FPN backbones, segmenters and other non-detector modules; a torchvision detector
    (or a module holding a ``MultiScaleRoIAlign``) is a ``TypeError``: use
    ``heads.optimize_for_inference``, which also speeds up its RoI-align.

    The result is for inference only: parameters get ``requires_grad=False`` and ``.train()``
    would train a network without its norms. Folded norms become ``nn.Identity`` and their convs
    gain a ``bias``, so the ``state_dict`` loses the ``bn*`` keys and gains ``conv*.bias``: load
    checkpoints before calling this.

    ``winograd``: fused 3x3 convolutions (stride 1) run as Winograd F(4x4, 3x3) convolutions where
    that was measured faster for this CPU kind and the transforms installed
    (``backbones.winograd.THRESHOLDS``, per image, so batching never changes an image's outputs:
    with AVX-512 and Numba from 48 channels on maps of 16+ 4x4 output tiles, under 128 channels only
    up to 64; a ResNet's layer2-3 at 224 px, Res2Net's splits in layer2-3, a detector's layer2-4, FPN
    and RPN convs at 800 px), in fp32 only; their rounding error is larger (relative 1e-5 instead of
    2e-6, see ``backbones.winograd``). ``winograd=False`` keeps oneDNN's direct convolution everywhere.

    ``dtype=torch.bfloat16`` (opt-in) computes in bf16 after folding in fp32, behind an fp32
    interface: inputs are cast on the way in, outputs back to float32 (``backbones.low_precision``).
    Fast only where bf16 is native (AVX512-BF16 or AMX CPUs, GPUs); outputs move by bf16 rounding.
    """
    check_inference_dtype(dtype)
    if isinstance(model, nn.Module):
        detector = next((m for m in model.modules() if isinstance(m, _DETECTOR_PARTS)), None)
        if detector is not None:
            raise TypeError(
                f"backbones.optimize_for_inference does not handle detectors ({type(model).__name__} holds a "
                f"{type(detector).__name__}); use heads.optimize_for_inference, which also runs their RoI-align fast"
            )
    model = optimize_layers(model, channels_last=channels_last, fold=fold, fuse=fuse, inplace=inplace,
                            winograd=winograd)
    return run_in_dtype(model, dtype)
