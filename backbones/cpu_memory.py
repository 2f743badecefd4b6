"""Keep freed CPU memory for reuse: no page faults on every forward pass.

PyTorch's CPU tensors come from the C library's ``malloc``. glibc serves large blocks (a ResNet's
activations at batch 8 are ~25 MB each) with a fresh ``mmap`` and returns them to the OS on
``free``, or trims the heap's top once it holds enough free memory; either way the next forward pass
faults every page in again and the kernel zeroes it. Measured on ResNet-50 at batch 8, 224 px
(2-core AMD EPYC, AVX512-BF16): 13,000-28,000 page faults per forward pass and 10–14% of its
time (``python tools/measure_inference.py``).
ONNX Runtime and OpenVINO keep their own memory arenas and do not pay this.

:func:`keep_freed_memory` asks glibc, through ``mallopt``, to serve every block from the heap and
never give its top back, so that a steady workload reuses the same pages. This is a setting of the
whole process (every tensor, every library), hence an explicit call: the tools of this package make
it at startup, a program of yours can make it once at startup too. The price is that the process
keeps its peak memory reserved until it exits. Off glibc (macOS, Windows, musl) it does nothing.
jemalloc or tcmalloc (``LD_PRELOAD``) achieve the same from outside the process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import lru_cache

__all__ = ["freed_memory_kept", "keep_freed_memory"]

# mallopt parameters, from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
#: The largest value ``mallopt`` takes (an ``int``): a heap top is given back only beyond 2 GiB free.
_TRIM_ONLY_BEYOND = 2**31 - 1
#: Whether :func:`keep_freed_memory` has taken effect in this process (it cannot be undone).
_kept = False


@lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version") else None


def keep_freed_memory() -> bool:
    """Make glibc's ``malloc`` keep freed memory for reuse (no ``mmap`` per block, no heap trimming).

    Returns whether the setting was applied: ``False`` where the C library is not glibc. Calling
    it again is harmless. Blocks a thread other than the main one cannot get in its own arena come
    from the main heap (glibc's fallback), so nothing fails for lack of ``mmap``.
    """
    global _kept
    libc = _glibc()
    if libc is None:
        return False
    # both set, or the mmap threshold keeps rising and falling with glibc's dynamic heuristics
    if libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_ONLY_BEYOND):
        _kept = True
    return _kept


def freed_memory_kept() -> bool:
    """Whether this process keeps freed memory (:func:`keep_freed_memory` took effect); once set,
    it stays so until the process exits."""
    return _kept
