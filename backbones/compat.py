"""Every private torch / torchvision API that ``backbones`` relies on, each behind one function.

Private APIs can change in any release. Keeping each in one place, with a fallback that works with
public APIs only (slower, or less general), means an upgrade that breaks one degrades that one
feature instead of the package; ``tests/test_compat.py`` checks that each still exists and still
behaves as relied on here, and names the API and the installed versions when it does not.
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch
from torch import nn
from torchvision.ops.feature_pyramid_network import LastLevelP6P7


def _find_onednn_pointwise():
    try:  # oneDNN convolution with bias, residual add and activation as post-ops (CPU builds)
        op = torch.ops.mkldnn._convolution_pointwise
        return op if hasattr(op, "default") and hasattr(op, "binary") else None
    except (AttributeError, RuntimeError):
        return None


def _find_onednn_pointwise_inplace():
    try:  # the same, accumulating into the residual's memory (oneDNN's "sum" post-op)
        op = torch.ops.mkldnn._convolution_pointwise_
        return op.binary if hasattr(op, "binary") else None
    except (AttributeError, RuntimeError):
        return None


_ONEDNN_POINTWISE = _find_onednn_pointwise()
_ONEDNN_POINTWISE_INPLACE = _find_onednn_pointwise_inplace()


def has_onednn_pointwise() -> bool:
    """Whether :func:`onednn_conv_pointwise` can run (torch built with oneDNN and the op present)."""
    return _ONEDNN_POINTWISE is not None and torch.backends.mkldnn.is_available()


@functools.cache
def onednn_bf16_supported() -> bool:
    """Whether PyTorch's oneDNN ops run bf16 on this CPU (``torch.ops.mkldnn._is_mkldnn_bf16_supported``:
    AVX-512 BW/VL/DQ or AVX-NE-CONVERT; on an AVX2-only CPU they refuse bf16). Without the function:
    ATen's CPU capability says AVX-512."""
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if probe is not None:
        return bool(probe())
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def onednn_conv_pointwise(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    padding: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    relu: bool,
    residual: torch.Tensor | None = None,
    accumulate: bool = False,
) -> torch.Tensor:
    """``act(conv2d(x) + bias [+ residual])`` as one oneDNN primitive
    (``torch.ops.mkldnn._convolution_pointwise``; fp32 CPU tensors, zero padding, no autograd).
    Callers check :func:`has_onednn_pointwise` first and otherwise use ``F.conv2d``.

    ``accumulate=True`` writes the result into ``residual`` and returns it (oneDNN's in-place "sum"
    post-op: one read of the residual fewer and no new output; see ``tools/measure_inference.py``);
    without the in-place op it falls back to a new output."""
    args = (weight, bias, list(padding), list(stride), list(dilation), groups)
    if residual is None:
        return _ONEDNN_POINTWISE(x, *args, "relu" if relu else "none", [], "")
    # after a binary post-op "no activation" is None; "none" is refused
    unary = "relu" if relu else None
    if accumulate and _ONEDNN_POINTWISE_INPLACE is not None:
        return _ONEDNN_POINTWISE_INPLACE(residual, x, *args, "add", 1.0, unary, [], "")
    return _ONEDNN_POINTWISE.binary(x, residual, *args, "add", None, unary, [], "")


def onednn_prepack_weight(
    weight: torch.Tensor, *, padding: Sequence[int], stride: Sequence[int], dilation: Sequence[int], groups: int,
    input_shape: Sequence[int],
) -> torch.Tensor:
    """``weight`` reordered once into the blocked layout oneDNN's convolution picks for inputs of
    ``input_shape`` (``torch.ops.mkldnn._reorder_convolution_weight``), which
    :func:`onednn_conv_pointwise` takes in place of ``weight`` (any input shape: another one is
    reordered again, as a plain weight always is); ``weight`` itself where the op is missing."""
    reorder = getattr(torch.ops.mkldnn, "_reorder_convolution_weight", None)
    if reorder is None:
        return weight
    return reorder(weight, list(padding), list(stride), list(dilation), groups, list(input_shape))


def _find_onednn_linear():
    try:  # oneDNN inner product (CPU builds)
        op = torch.ops.mkldnn._linear_pointwise
        return op if hasattr(op, "default") else None
    except (AttributeError, RuntimeError):
        return None


_ONEDNN_LINEAR = _find_onednn_linear()


def has_onednn_linear() -> bool:
    """Whether :func:`onednn_linear` can run (torch built with oneDNN and the op present)."""
    return _ONEDNN_LINEAR is not None and torch.backends.mkldnn.is_available()


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear`` as oneDNN's inner product (``torch.ops.mkldnn._linear_pointwise``; fp32 CPU
    tensors, no autograd). Callers check :func:`has_onednn_linear` first."""
    return _ONEDNN_LINEAR(x, weight, bias, "none", [], "")


def forward_hooks_observe(module: nn.Module) -> bool:
    """Whether a forward hook could keep the output of ``module`` or of a module inside it (its own
    hooks, or hooks registered for every module with ``register_module_forward_hook``)."""
    if getattr(nn.modules.module, "_global_forward_hooks", True):  # unknown: assume they do
        return True
    return any(getattr(m, "_forward_hooks", True) for m in module.modules())


_PUBLIC_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
#: Base class of the norms that keep running statistics updated in training mode (BN, SyncBN,
#: their lazy forms); the public classes if torch stops exposing it.
BATCH_NORM_TYPES: type | tuple[type, ...] = getattr(nn.modules.batchnorm, "_BatchNorm", _PUBLIC_BATCH_NORMS)


def named_child_slots(module: nn.Module) -> list[tuple[str, nn.Module | None]]:
    """``(name, child)`` of every child slot of ``module`` in registration order, ``None`` slots and
    a module registered under two names included (``module._modules``; ``named_children`` skips
    both, which would pair the wrong neighbours in a ``Sequential``)."""
    slots = getattr(module, "_modules", None)
    if isinstance(slots, dict):
        return list(slots.items())
    return list(module.named_children())


def set_p6p7_source(block: LastLevelP6P7, *, from_p5: bool) -> None:
    """Make torchvision's ``LastLevelP6P7`` compute P6 from P5 (``from_p5``) or from C5.

    torchvision decides with its ``use_P5`` attribute, set to ``in_channels == out_channels``; a C5
    with as many channels as the pyramid would be mistaken for P5. Without the attribute the
    source cannot be chosen, so a request that differs from torchvision's own choice is an error.
    """
    if hasattr(block, "use_P5"):
        block.use_P5 = from_p5
        return
    default = block.p6.in_channels == block.p7.in_channels
    if from_p5 != default:
        raise RuntimeError(
            "this torchvision's LastLevelP6P7 has no use_P5 attribute: P6 cannot be taken from "
            f"{'P5' if from_p5 else 'C5'} when C5 has {'other than' if from_p5 else 'as many'} channels as the pyramid"
        )
