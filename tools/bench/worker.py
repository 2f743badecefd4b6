"""Measure one benchmark row (a model at one input size and batch size), in this process.

Run as ``python -m backbones_tools.bench.worker`` it reads ``{"config": ..., "model_index": i, "size": s,
"batch": b}`` as JSON on stdin and prints the row's record as one JSON line prefixed with
:data:`RESULT_PREFIX`, so that each row gets a fresh process (clean peak memory, no cached state).
"""

from __future__ import annotations

import gc
import json
import sys
import traceback
from typing import Any

import torch

from backbones_tools.bench.config import BenchConfig, ModelSpec
from backbones_tools.bench.measure import count_gmacs, count_params, peak_memory_mb, reset_peak_memory, summarize, time_interleaved
from backbones_tools.bench.models import DTYPES, build_ours, build_peer, make_inputs, make_step, share_weights

RESULT_PREFIX = "BENCH_RESULT "
MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def base_record(config: BenchConfig, spec: ModelSpec, size: int, batch: int) -> dict[str, Any]:
    """The identifying fields of a row, measurements left empty."""
    return {
        "model": spec.name,
        "type": spec.type,
        "input_size": size,
        "batch": batch,
        "mode": config.mode,
        "dtype": config.dtype,
        "memory_format": spec.memory_format or config.memory_format,
        "device": config.device,
        "optimized": spec.optimize and config.mode == "inference",
        "compiled": spec.compile,
        "threads": None,
        "params": None,
        "gmacs": None,
        "latency_ms": None,
        "latency_p10_ms": None,
        "latency_p90_ms": None,
        "latency_min_ms": None,
        "throughput": None,
        "peak_mem_mb": None,
        "peer": None,
        "peer_throughput": None,
        "peer_latency_ms": None,
        "peer_gmacs": None,
        "ratio": None,
        "ratio_best": None,
        "peers": [],
        "status": "ok",
        "error": None,
    }


def _prepare(model: torch.nn.Module, config: BenchConfig, device: torch.device, memory_format: torch.memory_format) -> torch.nn.Module:
    model.train(config.mode == "train_step")
    return model.to(device=device, dtype=DTYPES[config.dtype], memory_format=memory_format)


def _flop_inputs(kind: str, size: int, device: torch.device, dtype: torch.dtype, memory_format, seed: int) -> Any:
    return make_inputs(kind, 1, size, device, dtype, memory_format, torch.Generator().manual_seed(seed))


def measure_row(config: BenchConfig, spec: ModelSpec, size: int, batch: int) -> dict[str, Any]:
    """Measure ``spec`` at ``size`` x ``batch`` and its peers side by side; returns the record.

    Exceptions propagate (the caller turns them into an error row).
    """
    record = base_record(config, spec, size, batch)
    if config.threads:
        torch.set_num_threads(config.threads)
    record["threads"] = torch.get_num_threads()
    device, dtype = torch.device(config.device), DTYPES[config.dtype]
    ours_format = MEMORY_FORMATS[spec.memory_format or config.memory_format]
    peer_seed = lambda k: config.seed + 1000 * (k + 1)  # noqa: E731  a peer rebuilt later gets the same weights

    torch.manual_seed(config.seed)
    ours, kind = build_ours(spec)
    for k, peer_spec in enumerate(spec.peers):
        if peer_spec.share_weights:
            torch.manual_seed(peer_seed(k))
            peer, _ = build_peer(peer_spec)
            share_weights(ours, kind, peer)
            del peer
    record["params"] = count_params(ours)
    ours.eval().to(device=device, dtype=dtype)
    flop_inputs = _flop_inputs(kind, size, device, dtype, torch.contiguous_format, config.seed)
    record["gmacs"] = count_gmacs(lambda: ours(flop_inputs))

    if config.mode == "inference" and spec.optimize:
        from backbones import optimize_for_inference

        optimize_for_inference(ours, channels_last=ours_format == torch.channels_last)
    ours = _prepare(ours, config, device, ours_format)
    if spec.compile:
        ours = torch.compile(ours)
    generator = torch.Generator().manual_seed(config.seed)
    inputs = make_inputs(kind, batch, size, device, dtype, ours_format, generator)
    steps = {"ours": make_step(ours, kind, inputs, config.mode, size)}

    gc.collect()
    reset_peak_memory(device)
    for _ in range(max(1, config.warmup)):
        steps["ours"]()
    record["peak_mem_mb"] = peak_memory_mb(device)

    peer_info = {}
    for k, peer_spec in enumerate(spec.peers):
        torch.manual_seed(peer_seed(k))
        peer, peer_kind = build_peer(peer_spec)
        params = count_params(peer)
        peer.eval().to(device=device, dtype=dtype)
        flop_inputs = _flop_inputs(peer_kind, size, device, dtype, torch.contiguous_format, config.seed)
        gmacs = count_gmacs(lambda: peer(flop_inputs))
        peer_format = MEMORY_FORMATS[peer_spec.memory_format]
        peer = _prepare(peer, config, device, peer_format)
        peer_inputs = make_inputs(peer_kind, batch, size, device, dtype, peer_format, torch.Generator().manual_seed(config.seed))
        steps[peer_spec.label] = make_step(peer, peer_kind, peer_inputs, config.mode, size)
        peer_info[peer_spec.label] = {"peer": peer_spec.label, "params": params, "gmacs": gmacs}

    times = time_interleaved(steps, device, config.warmup, config.repeats)
    record.update(summarize(times.pop("ours"), batch))
    for label, latencies in times.items():
        stats = summarize(latencies, batch)
        peer_info[label].update(stats)
    if peer_info:
        best = max(peer_info.values(), key=lambda p: p["throughput"])
        record.update(
            peer=best["peer"],
            peer_throughput=best["throughput"],
            peer_latency_ms=best["latency_ms"],
            peer_gmacs=best["gmacs"],
            ratio=record["throughput"] / best["throughput"],
            # the same ratio from each model's fastest run (less sensitive to load on a shared machine)
            ratio_best=min(p["latency_min_ms"] for p in peer_info.values()) / record["latency_min_ms"],
            peers=list(peer_info.values()),
        )
    return record


def error_record(config: BenchConfig, spec: ModelSpec, size: int, batch: int, message: str) -> dict[str, Any]:
    """The record of a row that failed, with the reason."""
    record = base_record(config, spec, size, batch)
    record.update(status="error", error=message)
    return record


def describe(exc: BaseException) -> str:
    """One-line reason of a failure (out-of-memory errors say so)."""
    if isinstance(exc, torch.cuda.OutOfMemoryError) or isinstance(exc, MemoryError):
        return f"out of memory: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def run_row_safely(config: BenchConfig, spec: ModelSpec, size: int, batch: int) -> dict[str, Any]:
    """:func:`measure_row`, with a failure turned into an error record."""
    try:
        return measure_row(config, spec, size, batch)
    except Exception as exc:  # noqa: BLE001  one failing row must not stop the others
        traceback.print_exc(file=sys.stderr)
        return error_record(config, spec, size, batch, describe(exc))


def main() -> int:
    """Entry point of the row subprocess."""
    request = json.loads(sys.stdin.read())
    config = BenchConfig.model_validate(request["config"])
    spec = config.models[request["model_index"]]
    record = run_row_safely(config, spec, request["size"], request["batch"])
    sys.stdout.write(RESULT_PREFIX + json.dumps(record) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
