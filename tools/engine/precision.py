"""Training precision and memory layout chosen from the machine (``train.amp: auto``,
``train.channels_last: auto``).

bf16 autocast is only fast where the hardware runs bf16 natively: CUDA GPUs of compute capability 8
or newer (Ampere on; ``torch.cuda.is_bf16_supported()`` is also true where bf16 is emulated), and
CPUs with AVX512-BF16 or AMX. Elsewhere oneDNN emulates
it and a training step gets about 10x slower (the detection demo: 10.5 against 0.97 s/iteration
on a 2-core AVX2-only AMD EPYC), so ``auto`` picks fp32 there. The decision, and the machine facts
that made it, are returned as a :class:`Precision` that the trainer prints and logs.
"""

from __future__ import annotations

import logging
import os
import platform
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch

logger = logging.getLogger(__name__)

#: CPU features that bear on the choice (what the ``start`` line of ``metrics.jsonl`` records).
RELEVANT_CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
                      "avx_vnni", "amx_tile", "amx_bf16", "bf16")
#: CPU features that run bf16 convolutions and matmuls natively (x86; "bf16" is the aarch64 flag).
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
#: oneDNN ISA caps (``ONEDNN_MAX_CPU_ISA``) that keep it off its bf16 instructions.
NO_BF16_ISA_CAPS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE",
                    "AVX512_CORE_VNNI")
#: Measured slow-down of bf16 autocast where the CPU emulates it (detection demo, AVX2 only).
EMULATED_BF16_SLOWDOWN = 10


@dataclass(frozen=True)
class Precision:
    """What a run trains with, and why."""

    amp: str  # "none" | "fp16" | "bf16": the autocast dtype actually used
    channels_last: bool
    reason: str
    device_type: str
    device_name: str
    cpu_flags: tuple[str, ...] = ()

    def record(self) -> dict[str, Any]:
        """Fields of the ``start`` line of ``metrics.jsonl``."""
        out: dict[str, Any] = {"amp": self.amp, "channels_last": self.channels_last,
                               "precision_reason": self.reason, "device_name": self.device_name}
        if self.device_type == "cpu":
            out["cpu_flags"] = list(self.cpu_flags)
        return out

    def describe(self) -> str:
        """One line for the console."""
        amp = {"none": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast + grad scaler"}[self.amp]
        layout = "channels-last" if self.channels_last else "NCHW"
        return f"precision: {amp}, {layout} on {self.device_name} ({self.reason})"


@lru_cache(maxsize=1)
def cpu_model_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    for line in _cpuinfo_lines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


@lru_cache(maxsize=1)
def cpu_flags() -> tuple[str, ...]:
    """The :data:`RELEVANT_CPU_FLAGS` this CPU has (from ``/proc/cpuinfo`` on Linux, else torch's
    cpuinfo-based checks)."""
    flags: set[str] = set()
    for line in _cpuinfo_lines():
        key = line.split(":", 1)[0].strip().lower()
        if key in ("flags", "features"):
            flags.update(line.split(":", 1)[1].split())
    if not flags:
        flags = _torch_cpu_flags()
    return tuple(f for f in RELEVANT_CPU_FLAGS if f in flags)


def _cpuinfo_lines() -> list[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return f.read().splitlines()
    except OSError:
        return []


def _torch_cpu_flags() -> set[str]:
    """Fallback where there is no ``/proc/cpuinfo``: ``torch.cpu``'s private feature checks."""
    checks = {"avx2": "_is_avx2_supported", "avx512f": "_is_avx512_supported",
              "avx512_bf16": "_is_avx512_bf16_supported", "amx_tile": "_is_amx_tile_supported"}
    found = set()
    for flag, name in checks.items():
        check = getattr(torch.cpu, name, None)
        try:
            if check is not None and check():
                found.add(flag)
        except RuntimeError:
            pass
    return found


def onednn_isa_cap() -> str | None:
    """The ISA cap set through ``ONEDNN_MAX_CPU_ISA`` (or its old name ``DNNL_MAX_CPU_ISA``)."""
    value = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return value.strip().upper() if value else None


def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bf16 convolutions natively (AVX512-BF16 / AMX, not capped off by
    ``ONEDNN_MAX_CPU_ISA``). oneDNN's own ``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` is true
    on any AVX-512 CPU, where it emulates bf16, so the CPU flags decide."""
    if onednn_isa_cap() in NO_BF16_ISA_CAPS:
        return False
    return any(flag in cpu_flags() for flag in NATIVE_BF16_FLAGS)


def cuda_has_native_bf16(device: torch.device) -> bool:
    """Whether the GPU computes in bf16 natively (compute capability 8+); older GPUs emulate it,
    slower than fp16 with a grad scaler."""
    return torch.cuda.get_device_capability(device)[0] >= 8


def _cuda_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device)


def choose_precision(amp: str, channels_last: bool | str, device: torch.device) -> Precision:
    """Resolve ``train.amp`` (``auto``/``none``/``fp16``/``bf16``) and ``train.channels_last``
    (``auto``/true/false) for ``device``.

    ``auto``: CUDA takes bf16 where supported, else fp16 with the grad scaler; a CPU takes bf16
    only with native bf16, else fp32. Channels-last ``auto`` follows the convolution dtype: on for
    bf16/fp16 (oneDNN's and cuDNN's reduced-precision convs are channels-last kernels), off for fp32
    on a CPU (measured in the README: no gain there). An explicit ``bf16`` on a CPU without native
    bf16 still runs, with a warning; ``fp16`` on a CPU runs fp32 (no fp16 autocast kernels).
    """
    if amp not in ("auto", "none", "fp16", "bf16"):
        raise ValueError(f"train.amp must be auto, none, fp16 or bf16; got {amp!r}")
    if device.type == "cuda":
        name = _cuda_name(device)
        bf16_ok = cuda_has_native_bf16(device)
        if amp == "auto":
            chosen = "bf16" if bf16_ok else "fp16"
            reason = f"auto: {'bf16 supported' if bf16_ok else 'no bf16 on this GPU, fp16 with a grad scaler'}"
        else:
            chosen, reason = amp, "set in the config"
        flags: tuple[str, ...] = ()
    else:
        name, flags = cpu_model_name(), cpu_flags()
        chosen, reason = _cpu_amp(amp, flags)
    layout = (chosen != "none") if channels_last == "auto" else bool(channels_last)
    return Precision(chosen, layout, reason, device.type, name, flags)


def _cpu_amp(amp: str, flags: tuple[str, ...]) -> tuple[str, str]:
    native = cpu_has_native_bf16()
    cap = onednn_isa_cap()
    capped = f" (ONEDNN_MAX_CPU_ISA={cap})" if cap else ""
    if amp == "auto":
        if native:
            return "bf16", f"auto: native bf16 ({', '.join(f for f in flags if f in NATIVE_BF16_FLAGS)})"
        return "none", f"auto: fp32, the CPU has no native bf16 (no AVX512-BF16/AMX){capped}"
    if amp == "fp16":
        logger.warning("train.amp=fp16 needs CUDA; training in fp32 on the CPU (bf16 is the CPU's "
                       "reduced precision, fast only with AVX512-BF16/AMX)")
        return "none", "fp16 set, but the CPU has no fp16 autocast: fp32"
    if amp == "bf16" and not native:
        logger.warning(
            "train.amp=bf16 on a CPU without native bf16 (no AVX512-BF16/AMX%s): oneDNN emulates it, "
            "roughly %dx slower than fp32; use train.amp=auto (fp32 here) unless you mean to",
            capped, EMULATED_BF16_SLOWDOWN)
        return "bf16", f"set in the config; emulated on this CPU (~{EMULATED_BF16_SLOWDOWN}x slower than fp32)"
    return amp, "set in the config"
