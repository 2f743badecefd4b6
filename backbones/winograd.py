"""Winograd F(4x4, 3x3) convolution for the CPU's big 3x3 layers.

A 3x3 convolution (stride 1, padding 1, no dilation or groups) computed on 6x6 input tiles that
each give 4x4 outputs: the tiles and the weights are transformed (``B^T d B``, ``G g G^T``), the 36
transformed positions are multiplied as 36 GEMMs (one grouped 1x1 oneDNN convolution) and the
products transformed back (``A^T m A``). It does 4x fewer multiplications than the direct
convolution, at the price of moving more memory and of a larger rounding error (about 7x that of the
direct convolution: relative 1e-5 instead of 2e-6). oneDNN no longer ships an fp32 Winograd kernel
for AVX2/AVX-512, hence this one: the GEMMs are oneDNN's, the transforms fused loops compiled by
Numba (:mod:`backbones.winograd_kernels`, ``pip install ".[fast]"``), or without Numba PyTorch ops
(batched 6x6 matmuls, 3-4x slower).

It pays only where the GEMMs are large enough (:data:`THRESHOLDS`, by CPU kind and transforms).
On a 2-core AMD EPYC (AVX512-BF16, fp32, 2 threads, fused transforms), ``python
tools/measure_inference.py`` timed a 256-channel 3x3 layer with bias and ReLU at 42.5 ms instead
of 110 ms on a 200x200 map (a detector's P2 level at 800 px), a 128-channel one at 2.6 instead of
4.5 ms on 8 images of 28x28 (a ResNet's layer2 at 224 px) and a 512-channel one at 3.0 instead of
4.0 ms on 8 images of 7x7; with few channels on big maps (64 on 8 images of 56x56) or on a single
small map (one 7x7 image) it is slower. :func:`winograd_pays` encodes where it pays.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from .compat import onednn_conv_pointwise, onednn_prepack_weight

__all__ = ["THRESHOLDS", "TORCH_OP_THRESHOLDS", "WIDE", "WinogradRange", "fused_transforms", "thresholds",
           "winograd_conv3x3", "winograd_pays", "winograd_weight"]

#: Lavin & Gray's F(4x4, 3x3) matrices (input, weight and output transforms).
_BT = ((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0),
       (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1))
_G = ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6),
      (1 / 24, 1 / 12, 1 / 6), (1 / 24, -1 / 12, 1 / 6), (0, 0, 1))
_AT = ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))


class WinogradRange(NamedTuple):
    """Where Winograd ran faster than oneDNN's direct convolution, in 4x4 output tiles per image.
    Per image, never per batch: whether a layer takes it must not depend on what an image is batched
    with, or the same image would get (slightly) different outputs alone and in a batch."""

    channels: int  #: the fewest channels, in and out
    per_image: int  #: the fewest tiles per image
    #: below :data:`WIDE` channels, the most tiles per image (``None``: no limit): on big maps the
    #: transforms of a narrow layer move more memory than its GEMMs save
    narrow_max: int | None = None


#: Channels from which a layer is not "narrow" (:attr:`WinogradRange.narrow_max`).
WIDE = 128

#: By CPU kind (ATen's CPU capability), with the fused Numba transforms: measured in turns against
#: oneDNN's direct convolution, 2 threads, on a 2-core AMD EPYC (AVX512-BF16; "AVX2": the same CPU
#: with oneDNN, ATen and MKL capped to AVX2 and Numba compiling for Haswell), ``python
#: tools/measure_inference.py`` printing some. AVX-512: 128-256 channels gained 1.2-2.6x from 16
#: tiles per image in batches of 8 and 0.9-1.3x on one such image; 7x7 maps (4 tiles) lost on one
#: image (0.6-0.9x) though they gained in batches of 8 (1.3-1.8x); 52-104 channels gained 1.0-1.8x
#: on 16-49 tiles per image (Res2Net's splits), 64 channels on 56x56 maps (196) gained alone but
#: lost in batches of 4-8 (0.86-1.02x), and on 200x200 (0.78-1.13x). AVX2: 48+ channels gained from
#: 4 tiles per image in batches (1.2-2.7x; 512 channels on one 7x7 image 0.8-1.0x), 26 did not.
#: Other CPU kinds get AVX-512's.
THRESHOLDS = {"AVX512": WinogradRange(48, 16, narrow_max=64), "AVX2": WinogradRange(48, 4)}
#: The same without Numba (the PyTorch-op transforms, 3-4x slower): with AVX-512 128 channels
#: gained nothing; with AVX2 128 channels on 100x100 gained 1.28x, on 50x50 1.06x.
TORCH_OP_THRESHOLDS = {"AVX512": WinogradRange(256, 100), "AVX2": WinogradRange(128, 100)}


@functools.cache
def _cpu_capability() -> str:
    return torch.backends.cpu.get_cpu_capability()


def thresholds() -> WinogradRange:
    """Where Winograd pays on this CPU with the transforms it has, decided at run time."""
    table = THRESHOLDS if fused_transforms() is not None else TORCH_OP_THRESHOLDS
    return table.get(_cpu_capability(), table["AVX512"])


def winograd_pays(x: torch.Tensor, in_channels: int, out_channels: int) -> bool:
    """Whether the Winograd path is faster than oneDNN's direct convolution for inputs of this image
    size on this CPU (the batch size plays no part: see :class:`WinogradRange`)."""
    h, w = x.shape[-2:]
    limits = thresholds()
    channels = min(in_channels, out_channels)
    tiles = -(-h // 4) * -(-w // 4)
    if channels < limits.channels or tiles < limits.per_image:
        return False
    return channels >= WIDE or limits.narrow_max is None or tiles <= limits.narrow_max


def winograd_weight(
    weight: torch.Tensor, bias: torch.Tensor | None, *, input_shape: Sequence[int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (O, I, 3, 3) weight and (O,) bias of a 3x3 convolution, transformed for
    :func:`winograd_conv3x3`: a (36 * O, I, 1, 1) channels-last weight (computed in float64) and a
    (36 * O,) bias. The bias goes to the one transformed position that every output sums with weight 1
    (``A^T[:, 1]`` is all ones), so the GEMMs add it for free.

    With ``input_shape`` (that of the convolution's input) the weight comes already in oneDNN's
    blocked layout for the GEMMs (otherwise each call reorders it: 1.5 ms for 256 channels, 9.4 MB,
    AVX512-BF16); it still runs for inputs of other shapes."""
    out_channels = weight.shape[0]
    g = torch.tensor(_G, dtype=torch.float64, device=weight.device)
    transformed = torch.einsum("ak,oikl,bl->aboi", g, weight.double(), g)
    packed = transformed.reshape(36 * out_channels, -1, 1, 1).to(weight.dtype)
    packed_bias = weight.new_zeros(6, 6, out_channels)
    if bias is not None:
        packed_bias[1, 1] = bias
    packed = packed.contiguous(memory_format=torch.channels_last)
    if input_shape is not None:
        n, c, h, w = input_shape
        packed = onednn_prepack_weight(packed, padding=(0, 0), stride=(1, 1), dilation=(1, 1), groups=36,
                                       input_shape=(1, 36 * c, n * -(-h // 4), -(-w // 4)))
    return packed, packed_bias.reshape(-1)


def _input_tiles(x: torch.Tensor, th: int, tw: int) -> torch.Tensor:
    """``B^T d B`` of every 6x6 input tile (stride 4, zero padding 1): (N, th, tw, 36 * C)."""
    n, c, h, w = x.shape
    bt = torch.tensor(_BT, dtype=x.dtype)
    hp, wp = 4 * th + 2, 4 * tw + 2
    padded = x.new_zeros(n, hp, wp, c)
    padded[:, 1:h + 1, 1:w + 1] = x.permute(0, 2, 3, 1)
    columns = padded.as_strided((n * hp, tw, 6, c), (wp * c, 4 * c, c, 1))
    across = torch.matmul(bt, columns)  # (N * hp, tw, 6, C): the columns of each tile transformed
    row = tw * 6 * c
    tiles = x.new_empty(n, th, tw, 6, 6 * c)
    for i in range(n):
        for t in range(th):  # the rows: one batched matmul per tile row, written in place
            rows = across.as_strided((tw, 6, 6 * c), (6 * c, row, 1), ((i * hp) + 4 * t) * row)
            torch.matmul(bt, rows, out=tiles[i, t])
    return tiles.view(n, th, tw, 36 * c)


def _output_tiles(m: torch.Tensor, th: int, tw: int) -> torch.Tensor:
    """``A^T m A`` of every transformed product: (N, th, 4, tw, 4, O), a permuted view."""
    n, o = m.shape[0], m.shape[1] // 36
    at = torch.tensor(_AT, dtype=m.dtype)
    products = m.permute(0, 2, 3, 1).reshape(n * th * tw, 6, 6 * o)
    down = torch.matmul(at, products)  # (tiles, 4, 6 * O)
    out = torch.matmul(at, down.view(-1, 6, o))  # (tiles * 4, 4, O)
    return out.view(n, th, tw, 4, 4, o).permute(0, 1, 3, 2, 4, 5)


@functools.cache
def fused_transforms() -> Any:
    """:mod:`backbones.winograd_kernels` (the transforms as fused Numba loops) where Numba is
    installed and its loops run here, else ``None`` (the PyTorch-op transforms run instead). The
    first call compiles the loops, or loads them from Numba's disk cache."""
    try:
        from . import winograd_kernels
    except ImportError:  # Numba is optional: pip install ".[fast]"
        return None
    try:
        probe = torch.ones(1, 1, 4, 4).contiguous(memory_format=torch.channels_last)
        winograd_kernels.output_transform(winograd_kernels.input_transform(probe, 1, 1).view(1, 1, 1, 36)
                                          .permute(0, 3, 1, 2), torch.empty_like(probe), relu=True)
    except Exception as exc:  # e.g. no threading layer Numba can load on this machine
        warnings.warn(f"Winograd convolutions use their slower PyTorch-op transforms: Numba's loops failed "
                      f"here ({type(exc).__name__}: {exc})", RuntimeWarning, stacklevel=2)
        return None
    return winograd_kernels


def winograd_conv3x3(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *, relu: bool = False, fused: bool | None = None
) -> torch.Tensor:
    """``act(conv3x3(x) + bias)`` with stride 1 and padding 1, from :func:`winograd_weight`'s
    ``weight`` and ``bias``; fp32 CPU tensors without autograd. Returns a channels-last tensor.
    ``fused``: transform with the Numba loops (``True``) or PyTorch ops (``False``); by default the
    loops where :func:`fused_transforms` has them."""
    n, c, h, w = x.shape
    out_channels = weight.shape[0] // 36
    th, tw = -(-h // 4), -(-w // 4)
    kernels = None if fused is False else fused_transforms()
    if fused and kernels is None:
        raise RuntimeError("the fused Winograd transforms need Numba (pip install '.[fast]')")
    tiles = _input_tiles(x, th, tw) if kernels is None else kernels.input_transform(x, th, tw)
    # The batch's tiles as one tall map: oneDNN's grouped convolution ran 1.1-2.9x faster on it than
    # on N small maps (8 images of 2x2 to 7x7 tiles, AVX512-BF16; the same memory, only the shape differs).
    products = onednn_conv_pointwise(tiles.view(1, n * th, tw, 36 * c).permute(0, 3, 1, 2), weight, bias,
                                     padding=(0, 0), stride=(1, 1), dilation=(1, 1), groups=36, relu=False,
                                     residual=None, accumulate=False)
    products = products.permute(0, 2, 3, 1).reshape(n, th, tw, 36 * out_channels).permute(0, 3, 1, 2)
    out = torch.empty(n, out_channels, h, w, dtype=x.dtype, memory_format=torch.channels_last)
    if kernels is not None:
        kernels.output_transform(products, out, relu=relu)
        return out
    result = _output_tiles(products, th, tw)
    target = out.permute(0, 2, 3, 1)
    if h == 4 * th and w == 4 * tw:
        target = target.view(n, th, 4, tw, 4, out_channels)
    else:
        result = result.reshape(n, 4 * th, 4 * tw, out_channels)[:, :h, :w]
    if relu:
        torch.clamp_min(result, 0, out=target)
    else:
        target.copy_(result)
    return out
