"""Measure one benchmark row (a model at one input size and batch size), in this process.

Run as ``python -m backbones_tools.bench.worker`` it reads ``{"config": ..., "model_index": i, "size": s,
"batch": b}`` as JSON on stdin and prints the row's record as one JSON line prefixed with
:data:`RESULT_PREFIX`, so that each row gets a fresh process (clean peak memory, no cached state).
"""

from __future__ import annotations

import gc
import json
import sys
import tempfile
import traceback
from typing import Any

import torch

from backbones_tools.bench.check import Diff, compare, rtol_for, runtime_outputs
from backbones_tools.bench.config import BenchConfig, ModelSpec, PeerSpec
from backbones_tools.bench.measure import (
    count_gmacs,
    count_params,
    hardware,
    peak_memory_mb,
    reset_peak_memory,
    summarize,
    time_interleaved,
)
from backbones_tools.bench.models import DTYPES, build_ours, build_peer, make_inputs, make_step, share_weights

RESULT_PREFIX = "BENCH_RESULT "
MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def base_record(config: BenchConfig, spec: ModelSpec, size: int, batch: int) -> dict[str, Any]:
    """The identifying fields of a row, measurements left empty."""
    mode = config.mode_of(spec)
    return {
        "model": spec.name,
        "type": spec.type,
        "input_size": size,
        "batch": batch,
        "mode": mode,
        "dtype": config.dtype,
        "amp": config.amp_of(spec) if mode == "train_step" else "none",
        "memory_format": spec.memory_format or config.memory_format,
        "device": config.device,
        "hardware": None,
        "optimized": spec.optimize and mode == "inference",
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


def _prepare(model: torch.nn.Module, mode: str, device: torch.device, dtype: torch.dtype,
             memory_format: torch.memory_format) -> torch.nn.Module:
    model.train(mode == "train_step")
    return model.to(device=device, dtype=dtype, memory_format=memory_format)


def _flop_inputs(kind: str, size: int, device: torch.device, dtype: torch.dtype, memory_format, seed: int) -> Any:
    return make_inputs(kind, 1, size, device, dtype, memory_format, torch.Generator().manual_seed(seed))


def _optimizer_for(kind: str):
    """``optimize_for_inference`` for ``kind``: ``heads``' for whole models (it also runs the
    detectors' RoI-align as a gather) where the package has it, else ``backbones``'."""
    if kind in ("detector", "segmenter"):
        import heads

        fn = getattr(heads, "optimize_for_inference", None)
        if fn is not None:
            return fn
    from backbones import optimize_for_inference

    return optimize_for_inference


def _gather_roi_align():
    """``use_gather_roi_align`` (what the training tool applies with ``train.fast_roi_align``)."""
    import heads

    fn = getattr(heads, "use_gather_roi_align", None)
    if fn is None:
        from backbones.inference import use_gather_roi_align as fn
    return fn


def peer_entry(peer: PeerSpec, status: str = "ok", reason: str | None = None, **fields: Any) -> dict[str, Any]:
    """A peer's part of the record (``status``: ok, skipped with a ``reason``, or error)."""
    entry = {"peer": peer.label, "source": peer.source, "version": None, "settings": None, "status": status,
             "reason": reason, "params": None, "gmacs": None, "ratio": None, "ratio_best": None, **Diff().record()}
    entry.update(fields)
    return entry


def _torch_version(source: str) -> str | None:
    """The version of the torchvision or timm package a peer comes from."""
    import importlib

    return getattr(importlib.import_module(source), "__version__", None)


def _runtime_peer(peer: PeerSpec, exported: Any, kind: str, inputs: Any, threads: int, record: dict[str, Any],
                  reference: Any, rtol: float) -> tuple[dict[str, Any], Any]:
    """A runtime peer on the exported model: its entry (outputs checked against ``reference``) and step."""
    from backbones_tools.bench import runtimes

    target, path = exported
    runner = runtimes.make_runtime_peer(peer, target, path, runtimes.input_arrays(kind, inputs), threads)
    diff = compare(kind, "inference", reference, runtime_outputs(kind, target.output_names, runner.outputs()), rtol)
    entry = peer_entry(peer, params=record["params"], gmacs=record["gmacs"], version=runner.version,
                       settings=runner.settings, **diff.record())
    return entry, runner.step


def _torch_peer(peer: PeerSpec, seed: int, config: BenchConfig, kind: str, size: int, batch: int, mode: str, amp: str,
                threads: int, reference: Any, rtol: float) -> tuple[dict[str, Any], Any]:
    """A torchvision / timm peer built with ``seed`` (the weights ours got with ``share_weights``): its
    entry (outputs checked against ``reference`` if the weights are shared) and step."""
    device, dtype = torch.device(config.device), DTYPES[config.dtype]
    torch.manual_seed(seed)
    model, peer_kind = build_peer(peer)
    params = count_params(model)
    model.eval().to(device=device, dtype=dtype)
    flop_inputs = _flop_inputs(peer_kind, size, device, dtype, torch.contiguous_format, config.seed)
    gmacs = count_gmacs(lambda: model(flop_inputs))
    peer_format = MEMORY_FORMATS[peer.memory_format]
    model = _prepare(model, mode, device, dtype, peer_format)
    inputs = make_inputs(peer_kind, batch, size, device, dtype, peer_format, torch.Generator().manual_seed(config.seed))
    work = make_step(model, peer_kind, inputs, mode, size, amp=amp, seed=config.seed)
    diff = Diff(note="not compared: different weights (share_weights: false)")
    if peer.share_weights:
        diff = compare(kind, mode, reference, work.reference(), rtol)
    entry = peer_entry(peer, params=params, gmacs=gmacs, version=_torch_version(peer.source),
                       settings=f"{peer.memory_format}, {threads} torch threads", **diff.record())
    return entry, work.step


def measure_row(config: BenchConfig, spec: ModelSpec, size: int, batch: int) -> dict[str, Any]:
    """Measure ``spec`` at ``size`` x ``batch`` and its peers side by side; returns the record.

    Our model fails the row (its exceptions propagate; the caller turns them into an error row); a
    peer that fails or computes other outputs than ours (same weights) is an ``error`` entry and
    the row's status ``peer_error``; a peer that does not apply or whose runtime is not installed
    is ``skipped`` with the reason.
    """
    with tempfile.TemporaryDirectory(prefix="bench_onnx_") as workdir:
        return _measure_row(config, spec, size, batch, workdir)


def _measure_row(config: BenchConfig, spec: ModelSpec, size: int, batch: int, workdir: str) -> dict[str, Any]:
    from backbones_tools.bench import runtimes

    record = base_record(config, spec, size, batch)
    mode = record["mode"]
    if config.threads:
        torch.set_num_threads(config.threads)
    threads = torch.get_num_threads()
    device, dtype = torch.device(config.device), DTYPES[config.dtype]
    record.update(threads=threads, hardware=hardware(device))
    if mode == "train_step":  # the training tool's decisions (tools/engine/precision.py), amp as the row says
        from backbones_tools.engine.precision import choose_precision

        layout = spec.memory_format == "channels_last" if spec.memory_format else "auto"
        precision = choose_precision(config.amp_of(spec), layout, device)
        ours_format = torch.channels_last if precision.channels_last else torch.contiguous_format
        record.update(amp=precision.amp, memory_format="channels_last" if precision.channels_last else "contiguous")
    else:
        ours_format = MEMORY_FORMATS[spec.memory_format or config.memory_format]
    amp = record["amp"]
    rtol = rtol_for(device, config.dtype, amp)
    peer_seed = lambda k: config.seed + 1000 * (k + 1)  # noqa: E731  a peer rebuilt later gets the same weights

    torch.manual_seed(config.seed)
    ours, kind = build_ours(spec)
    for k, peer_spec in enumerate(spec.peers):
        if not peer_spec.is_runtime and peer_spec.share_weights:
            torch.manual_seed(peer_seed(k))
            peer, _ = build_peer(peer_spec)
            share_weights(ours, kind, peer)
            del peer
    record["params"] = count_params(ours)
    ours.eval().to(device=device, dtype=dtype)
    flop_inputs = _flop_inputs(kind, size, device, dtype, torch.contiguous_format, config.seed)
    record["gmacs"] = count_gmacs(lambda: ours(flop_inputs))

    # runtime peers: which apply, and one ONNX export of our weights (before optimize_for_inference)
    entries: dict[int, dict[str, Any]] = {}
    runtime_peers = {}
    for k, peer_spec in enumerate(spec.peers):
        if peer_spec.is_runtime:
            reason = runtimes.skip_reason(peer_spec, mode=mode, device=device, dtype=config.dtype)
            if reason:
                entries[k] = peer_entry(peer_spec, "skipped", reason)
            else:
                runtime_peers[k] = peer_spec
    exported = None
    if runtime_peers:
        try:
            exported = runtimes.export_model(ours, kind, size, workdir)
        except Exception as exc:  # noqa: BLE001  the peers fail, our row does not
            traceback.print_exc(file=sys.stderr)
            for k, peer_spec in runtime_peers.items():
                entries[k] = peer_entry(peer_spec, "error", f"ONNX export failed: {describe(exc)}")
            runtime_peers = {}

    if mode == "inference" and spec.optimize:
        _optimizer_for(kind)(ours, channels_last=ours_format == torch.channels_last)
    elif mode == "train_step" and spec.optimize and device.type == "cpu":
        record["optimized"] = _gather_roi_align()(ours) > 0  # train.fast_roi_align (CPU)
    ours = _prepare(ours, mode, device, dtype, ours_format)
    if spec.compile:
        ours = torch.compile(ours)
    generator = torch.Generator().manual_seed(config.seed)
    inputs = make_inputs(kind, batch, size, device, dtype, ours_format, generator)
    work = make_step(ours, kind, inputs, mode, size, amp=amp, seed=config.seed)
    steps = {"ours": work.step}
    reference = work.reference() if mode == "train_step" else None  # before any update of the weights

    gc.collect()
    reset_peak_memory(device)
    for _ in range(max(1, config.warmup)):
        steps["ours"]()
    record["peak_mem_mb"] = peak_memory_mb(device)
    if reference is None:
        reference = work.reference()

    timed: dict[int, str] = {}  # peer index -> its key in steps
    for k, peer_spec in enumerate(spec.peers):
        if k in entries:
            continue
        if peer_spec.label in steps:
            entries[k] = peer_entry(peer_spec, "error", "the same peer twice in this row")
            continue
        try:
            if peer_spec.is_runtime:
                entry, step = _runtime_peer(peer_spec, exported, kind, inputs, threads, record, reference, rtol)
            else:
                entry, step = _torch_peer(peer_spec, peer_seed(k), config, kind, size, batch, mode, amp,
                                          threads, reference, rtol)
        except Exception as exc:  # noqa: BLE001  a failing peer is reported; our row still counts
            traceback.print_exc(file=sys.stderr)
            entries[k] = peer_entry(peer_spec, "error", describe(exc))
            continue
        if entry["diff_ok"] is False:  # still timed, but the row says so
            entry.update(status="error", reason=f"outputs differ from ours: {entry['diff_note']}")
        entries[k], steps[peer_spec.label], timed[k] = entry, step, peer_spec.label

    times = time_interleaved(steps, device, config.warmup, config.repeats)
    record.update(summarize(times.pop("ours"), batch))
    for k, label in timed.items():
        entries[k].update(summarize(times[label], batch))
        entries[k]["ratio"] = record["throughput"] / entries[k]["throughput"]
        entries[k]["ratio_best"] = entries[k]["latency_min_ms"] / record["latency_min_ms"]
    peers = [entries[k] for k in sorted(entries)]
    record["peers"] = peers
    fine = [p for p in peers if p["status"] == "ok" and p.get("throughput")]
    if fine:
        best = max(fine, key=lambda p: p["throughput"])
        record.update(
            peer=best["peer"],
            peer_throughput=best["throughput"],
            peer_latency_ms=best["latency_ms"],
            peer_gmacs=best["gmacs"],
            ratio=record["throughput"] / best["throughput"],
            # the same ratio from each model's fastest run (less sensitive to load on a shared machine)
            ratio_best=min(p["latency_min_ms"] for p in fine) / record["latency_min_ms"],
        )
    failed = [p for p in peers if p["status"] == "error"]
    if failed:
        record.update(status="peer_error", error="; ".join(f"{p['peer']}: {p['reason']}" for p in failed))
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
