"""Measurements: parameters, MACs (``FlopCounterMode``), latency and peak memory."""

from __future__ import annotations

import resource
import statistics
import time
from typing import Any, Callable, Mapping

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared tensors counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def count_gmacs(run: Callable[[], Any]) -> float:
    """Multiply-accumulates of one call of ``run`` in billions: ``FlopCounterMode`` FLOPs / 2
    (convolutions and matrix products; norms, activations and pooling count zero, as in the
    published tables)."""
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            run()
    return counter.get_total_flops() / 2e9


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(step: Callable[[], Any], device: torch.device) -> float:
    """Seconds taken by one ``step()``: CUDA events on a GPU, ``perf_counter`` on the CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0
    begin = time.perf_counter()
    step()
    return time.perf_counter() - begin


def time_interleaved(steps: Mapping[str, Callable[[], Any]], device: torch.device, warmup: int, repeats: int) -> dict[str, list[float]]:
    """Latencies (seconds) of each step, run in turns (A, B, A, B, ...) so that changing load on
    the machine affects every model alike."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    _synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            times[name].append(time_once(step, device))
    return times


def summarize(latencies: list[float], batch: int) -> dict[str, float]:
    """Median, p10, p90 and minimum latency in milliseconds and the throughput (images/s at the median)."""
    ms = sorted(t * 1000.0 for t in latencies)
    if len(ms) > 1:
        deciles = statistics.quantiles(ms, n=10, method="inclusive")
        p10, p90 = deciles[0], deciles[-1]
    else:
        p10 = p90 = ms[0]
    median = statistics.median(ms)
    return {"latency_ms": median, "latency_p10_ms": p10, "latency_p90_ms": p90, "latency_min_ms": ms[0],
            "throughput": batch * 1000.0 / median}


def _read_status_kib(field: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window: CUDA allocator statistics on a GPU; on the CPU the process's
    peak RSS is reset to its current RSS (Linux ``/proc/self/clear_refs``), where the kernel allows."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")
    except OSError:
        pass


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of the window: CUDA max allocated on a GPU, the process's peak RSS on the CPU
    (``VmHWM``, or ``ru_maxrss`` where /proc is not there)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    hwm = _read_status_kib("VmHWM")
    if hwm is None:
        hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return hwm / 1024.0


def hardware(device: torch.device) -> str:
    """What a row ran on, written next to its figures: the GPU's name, or the CPU's model name with
    its AVX-512 / AMX features (AVX2 where it has none) and any ``ONEDNN_MAX_CPU_ISA`` cap, read as
    the training tool reads them (:mod:`backbones_tools.engine.precision`)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from backbones_tools.engine.precision import cpu_flags, cpu_model_name, onednn_isa_cap

    flags = cpu_flags()
    wide = [f for f in flags if f.startswith(("avx512", "amx"))] or [f for f in flags if f == "avx2"]
    cap = onednn_isa_cap()
    features = " ".join(wide) if wide else "no AVX-512/AVX2 flags"
    return (f"{cpu_model_name()} ({features}{f'; oneDNN capped to {cap}' if cap else ''}; "
            f"Winograd transforms: {winograd_transforms()})")


def winograd_transforms() -> str:
    """Which Winograd transforms our CPU rows run: Numba's fused loops or PyTorch ops."""
    from backbones.winograd import fused_transforms

    if fused_transforms() is None:
        return "PyTorch ops (no Numba)"
    import numba

    return f"Numba {numba.__version__}"
