"""The Winograd F(4x4, 3x3) input and output transforms as fused CPU loops, compiled by Numba.

Hand-written because no library ships them for PyTorch on the CPU (oneDNN dropped its fp32
Winograd for AVX2/AVX-512) and because, built from PyTorch ops, each transform is several passes of
tiny batched matmuls over maps bigger than the caches: on a 256-channel 200x200 map that took 28 ms
(input) and 17 ms (output) around a 33 ms GEMM. These loops read each tile once and write its 36
(or 16) values once, vectorised over the channels: 6 and 5 ms, about the memory's speed (one-off
timings, 2-core AMD EPYC, AVX512-BF16; ``python tools/measure_inference.py`` times whole layers).
Numba compiles them for the CPU it runs on (AVX2 code on an AVX2 CPU) on first use and caches the
machine code on disk.

Optional: ``pip install ".[fast]"``. Without Numba, :mod:`backbones.winograd` uses its PyTorch-op
transforms (same results to float rounding). The loops run on ``torch.get_num_threads()`` threads
of Numba's OpenMP threading layer, which this module selects unless ``NUMBA_THREADING_LAYER`` says
otherwise: it is safe to enter from several Python threads at once (Numba's fallback "workqueue"
layer is not), and the same loops split over a pool of Python threads instead ran 5x slower here.
(Numba's OpenMP runtime is the system's libgomp, PyTorch's wheels bring their own: two pools of
worker threads, which take turns, as the layers run one after the other.)
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba import njit, prange

__all__ = ["input_transform", "output_transform"]

if numba.config.THREADING_LAYER == "default":
    numba.config.THREADING_LAYER = "omp"


# float32 constants: a Python float would promote the arithmetic to float64 (half the vector width)
_ZERO, _TWO, _FOUR, _FIVE, _EIGHT = (np.float32(v) for v in (0, 2, 4, 5, 8))


@njit(inline="always")
def _bt(a0, a1, a2, a3, a4, a5):  # B^T (Lavin & Gray) applied to 6 values
    return (_FOUR * a0 - _FIVE * a2 + a4,
            (a3 + a4) - _FOUR * (a1 + a2),
            _FOUR * (a1 - a2) + (a4 - a3),
            _TWO * (a3 - a1) + (a4 - a2),
            _TWO * (a1 - a3) + (a4 - a2),
            _FOUR * a1 - _FIVE * a3 + a5)


@njit(inline="always")
def _at(a0, a1, a2, a3, a4, a5):  # A^T applied to 6 values
    s12, d12, s34, d34 = a1 + a2, a1 - a2, a3 + a4, a3 - a4
    return a0 + s12 + s34, d12 + _TWO * d34, s12 + _FOUR * s34, d12 + _EIGHT * d34 + a5


@njit(parallel=True, cache=True, nogil=True)
def _input_tiles(x, tiles):
    """``tiles[i, t, tx, 6k + l, :] = (B^T d B)[k, l]``, ``d`` the 6x6 patch of ``x`` (N, H, W, C) at
    (4t - 1, 4tx - 1), zero outside the image; one tile row per job, the channels vectorised."""
    n, h, w, c = x.shape
    th, tw = tiles.shape[1], tiles.shape[2]
    for job in prange(n * th):
        i, t = job // th, job % th
        patch = np.empty((6, 6, c), dtype=x.dtype)
        across = np.empty((6, 6, c), dtype=x.dtype)
        for tx in range(tw):
            for k in range(6):
                y = 4 * t + k - 1
                for col in range(6):
                    xx = 4 * tx + col - 1
                    if 0 <= y < h and 0 <= xx < w:
                        for ch in range(c):
                            patch[k, col, ch] = x[i, y, xx, ch]
                    else:
                        for ch in range(c):
                            patch[k, col, ch] = _ZERO
            for col in range(6):  # B^T d: down each column
                for ch in range(c):
                    r = _bt(patch[0, col, ch], patch[1, col, ch], patch[2, col, ch],
                            patch[3, col, ch], patch[4, col, ch], patch[5, col, ch])
                    across[0, col, ch] = r[0]
                    across[1, col, ch] = r[1]
                    across[2, col, ch] = r[2]
                    across[3, col, ch] = r[3]
                    across[4, col, ch] = r[4]
                    across[5, col, ch] = r[5]
            for k in range(6):  # (B^T d) B: along each row
                p = 6 * k
                for ch in range(c):
                    r = _bt(across[k, 0, ch], across[k, 1, ch], across[k, 2, ch],
                            across[k, 3, ch], across[k, 4, ch], across[k, 5, ch])
                    tiles[i, t, tx, p, ch] = r[0]
                    tiles[i, t, tx, p + 1, ch] = r[1]
                    tiles[i, t, tx, p + 2, ch] = r[2]
                    tiles[i, t, tx, p + 3, ch] = r[3]
                    tiles[i, t, tx, p + 4, ch] = r[4]
                    tiles[i, t, tx, p + 5, ch] = r[5]


@njit(parallel=True, cache=True, nogil=True)
def _output_pixels(m, out, relu):
    """``out[i, 4t + a, 4tx + b, :] = act((A^T m A)[a, b])``, ``m`` (N, th, tw, 36, O) holding each
    tile's 36 products; outputs past the map's edge are dropped. One tile row per job."""
    n, h, w, o = out.shape
    th, tw = m.shape[1], m.shape[2]
    for job in prange(n * th):
        i, t = job // th, job % th
        down = np.empty((4, 6, o), dtype=out.dtype)
        result = np.empty((4, 4, o), dtype=out.dtype)
        for tx in range(tw):
            for col in range(6):  # A^T m: down each column
                for ch in range(o):
                    r = _at(m[i, t, tx, col, ch], m[i, t, tx, 6 + col, ch], m[i, t, tx, 12 + col, ch],
                            m[i, t, tx, 18 + col, ch], m[i, t, tx, 24 + col, ch], m[i, t, tx, 30 + col, ch])
                    down[0, col, ch] = r[0]
                    down[1, col, ch] = r[1]
                    down[2, col, ch] = r[2]
                    down[3, col, ch] = r[3]
            for a in range(4):  # (A^T m) A: along each row
                for ch in range(o):
                    r = _at(down[a, 0, ch], down[a, 1, ch], down[a, 2, ch], down[a, 3, ch], down[a, 4, ch], down[a, 5, ch])
                    result[a, 0, ch] = r[0]
                    result[a, 1, ch] = r[1]
                    result[a, 2, ch] = r[2]
                    result[a, 3, ch] = r[3]
            for a in range(min(4, h - 4 * t)):
                for b in range(min(4, w - 4 * tx)):
                    if relu:
                        for ch in range(o):
                            out[i, 4 * t + a, 4 * tx + b, ch] = max(result[a, b, ch], _ZERO)
                    else:
                        for ch in range(o):
                            out[i, 4 * t + a, 4 * tx + b, ch] = result[a, b, ch]


def _set_threads() -> None:
    """Numba's parallel loops on as many threads as PyTorch's ops."""
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


def input_transform(x: torch.Tensor, th: int, tw: int) -> torch.Tensor:
    """``B^T d B`` of every 6x6 input tile (stride 4, zero padding 1) of a float32 CPU ``x``
    (N, C, H, W): an (N, th, tw, 36 * C) tensor."""
    n, c = x.shape[:2]
    if x.stride(1) != 1:  # the loops vectorise over channels; a channel slice (Res2Net's splits) is read as it is
        x = x.contiguous(memory_format=torch.channels_last)
    pixels = x.permute(0, 2, 3, 1).numpy()
    tiles = torch.empty(n, th, tw, 36, c, dtype=x.dtype)
    _set_threads()
    _input_tiles(pixels, tiles.numpy())
    return tiles.view(n, th, tw, 36 * c)


def output_transform(products: torch.Tensor, out: torch.Tensor, *, relu: bool) -> None:
    """``act(A^T m A)`` of every tile's products (an (N, 36 * O, th, tw) tensor) written into the
    channels-last float32 ``out`` (N, O, H, W)."""
    n, channels, th, tw = products.shape
    products = products.contiguous(memory_format=torch.channels_last)
    m = products.permute(0, 2, 3, 1).numpy().reshape(n, th, tw, 36, channels // 36)
    _set_threads()
    _output_pixels(m, out.permute(0, 2, 3, 1).numpy(), relu)
