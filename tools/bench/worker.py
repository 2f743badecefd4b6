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
from dataclasses import dataclass
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
from backbones_tools.bench.runtimes import version
from backbones import keep_freed_memory
from backbones.cpu_memory import freed_memory_kept
from heads import use_gather_roi_align

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
        "optimized": spec.optimize and mode == "inference" and not spec.onednn_graph,
        "compiled": spec.compile,
        "onednn_graph": spec.onednn_graph and mode == "inference",
        "threads": None,
        "allocator": None,
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
    detectors' RoI-align as a gather), ``backbones``' for trunks."""
    if kind in ("detector", "segmenter"):
        from heads import optimize_for_inference
    else:
        from backbones import optimize_for_inference
    return optimize_for_inference


def peer_entry(peer: PeerSpec, status: str = "ok", reason: str | None = None, **fields: Any) -> dict[str, Any]:
    """A peer's part of the record (``status``: ok, skipped with a ``reason``, or error)."""
    entry = {"peer": peer.label, "source": peer.source, "version": None, "settings": None, "status": status,
             "reason": reason, "params": None, "gmacs": None, "ratio": None, "ratio_best": None, **Diff().record()}
    entry.update(fields)
    return entry


def _runtime_peer(peer: PeerSpec, exported: Any, kind: str, inputs: Any, threads: int, record: dict[str, Any],
                  reference: Any, rtol: float) -> tuple[dict[str, Any], Any]:
    """A runtime peer on the exported model: its entry (outputs checked against ``reference``) and step."""
    from backbones_tools.bench import runtimes

    target, path = exported
    runner = runtimes.make_runtime_peer(peer, target, path, runtimes.input_arrays(kind, inputs), threads,
                                        record["dtype"])
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
    entry = peer_entry(peer, params=params, gmacs=gmacs, version=version(peer.source),
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


@dataclass
class _Row:
    """What the steps of one row share: its request, the settings it runs under, and its record."""

    config: BenchConfig
    spec: ModelSpec
    size: int
    batch: int
    record: dict[str, Any]
    mode: str
    threads: int
    device: torch.device
    dtype: torch.dtype
    ours_format: torch.memory_format
    amp: str
    rtol: float

    def peer_seed(self, k: int) -> int:
        """The seed of peer ``k``'s weights (a peer rebuilt later gets the same weights)."""
        return self.config.seed + 1000 * (k + 1)


def _setup_row(config: BenchConfig, spec: ModelSpec, size: int, batch: int) -> _Row:
    """Threads, device, precision and memory layout of the row; starts its record."""
    record = base_record(config, spec, size, batch)
    mode = record["mode"]
    if config.threads:
        torch.set_num_threads(config.threads)
    threads = torch.get_num_threads()
    device, dtype = torch.device(config.device), DTYPES[config.dtype]
    if device.type == "cpu" and config.keep_freed_memory:
        keep_freed_memory()
    # what the process does, which an earlier row run in the same process may have set
    allocator = "malloc keeps freed memory" if device.type == "cpu" and freed_memory_kept() else "default"
    record.update(threads=threads, hardware=hardware(device), allocator=allocator)
    if mode == "train_step":  # the training tool's decisions (tools/engine/precision.py), amp as the row says
        from backbones_tools.engine.precision import choose_precision

        layout = spec.memory_format == "channels_last" if spec.memory_format else "auto"
        precision = choose_precision(config.amp_of(spec), layout, device)
        ours_format = torch.channels_last if precision.channels_last else torch.contiguous_format
        record.update(amp=precision.amp, memory_format="channels_last" if precision.channels_last else "contiguous")
    else:
        ours_format = MEMORY_FORMATS[spec.memory_format or config.memory_format]
    amp = record["amp"]
    return _Row(config=config, spec=spec, size=size, batch=batch, record=record, mode=mode, threads=threads,
                device=device, dtype=dtype, ours_format=ours_format, amp=amp,
                rtol=rtol_for(device, config.dtype, amp))


def _build_ours(row: _Row) -> tuple[torch.nn.Module, str]:
    """Our model (seeded with ``config.seed``), its weights shared with the torch peers that ask for
    it (each built with its own seed), counted (params, GMACs) in eval mode on the device."""
    torch.manual_seed(row.config.seed)
    ours, kind = build_ours(row.spec)
    for k, peer_spec in enumerate(row.spec.peers):
        if not peer_spec.is_runtime and peer_spec.share_weights:
            torch.manual_seed(row.peer_seed(k))
            peer, _ = build_peer(peer_spec)
            share_weights(ours, kind, peer)
            del peer
    row.record["params"] = count_params(ours)
    ours.eval().to(device=row.device, dtype=row.dtype)
    flop_inputs = _flop_inputs(kind, row.size, row.device, row.dtype, torch.contiguous_format, row.config.seed)
    row.record["gmacs"] = count_gmacs(lambda: ours(flop_inputs))
    return ours, kind


def _export_for_runtimes(row: _Row, ours: torch.nn.Module, kind: str,
                         workdir: str) -> tuple[dict[int, dict[str, Any]], Any]:
    """Which runtime peers apply (entries of the skipped ones, by peer index) and one ONNX export of
    our weights (before ``optimize_for_inference``) for the others; a failed export fails them."""
    from backbones_tools.bench import runtimes

    entries: dict[int, dict[str, Any]] = {}
    runtime_peers = {}
    for k, peer_spec in enumerate(row.spec.peers):
        if peer_spec.is_runtime:
            reason = runtimes.skip_reason(peer_spec, mode=row.mode, device=row.device, dtype=row.config.dtype)
            if reason:
                entries[k] = peer_entry(peer_spec, "skipped", reason)
            else:
                runtime_peers[k] = peer_spec
    exported = None
    if runtime_peers:
        try:
            exported = runtimes.export_model(ours, kind, row.size, workdir)
        except Exception as exc:  # noqa: BLE001  the peers fail, our row does not
            traceback.print_exc(file=sys.stderr)
            for k, peer_spec in runtime_peers.items():
                entries[k] = peer_entry(peer_spec, "error", f"ONNX export failed: {describe(exc)}")
    return entries, exported


def _prepare_ours(row: _Row, ours: torch.nn.Module, kind: str) -> torch.nn.Module:
    """Our model as the row runs it: optimized if asked, in the row's mode and layout, compiled if asked."""
    spec = row.spec
    if row.mode == "inference" and spec.onednn_graph:
        from backbones import OneDnnGraph

        ours = OneDnnGraph(ours, channels_last=row.ours_format == torch.channels_last)
    elif row.mode == "inference" and spec.optimize:
        _optimizer_for(kind)(ours, channels_last=row.ours_format == torch.channels_last)
    elif row.mode == "train_step" and spec.optimize and row.device.type == "cpu":
        row.record["optimized"] = use_gather_roi_align(ours) > 0  # train.fast_roi_align (CPU)
    ours = _prepare(ours, row.mode, row.device, row.dtype, row.ours_format)
    if spec.compile:
        ours = torch.compile(ours)
    return ours


def _ours_step(row: _Row, ours: torch.nn.Module, kind: str) -> tuple[Any, Any, Any]:
    """Our inputs, step and reference outputs; warms the step up and records its peak memory."""
    config, device = row.config, row.device
    generator = torch.Generator().manual_seed(config.seed)
    inputs = make_inputs(kind, row.batch, row.size, device, row.dtype, row.ours_format, generator)
    work = make_step(ours, kind, inputs, row.mode, row.size, amp=row.amp, seed=config.seed)
    reference = work.reference() if row.mode == "train_step" else None  # before any update of the weights

    gc.collect()
    reset_peak_memory(device)
    for _ in range(max(1, config.warmup)):
        work.step()
    row.record["peak_mem_mb"] = peak_memory_mb(device)
    if reference is None:
        reference = work.reference()
    return inputs, work.step, reference


def _add_peers(row: _Row, kind: str, inputs: Any, exported: Any, reference: Any,
               entries: dict[int, dict[str, Any]], steps: dict[str, Any]) -> dict[int, str]:
    """Builds each peer not yet in ``entries`` and adds its entry, and its step to ``steps``;
    returns the timed peers (peer index -> its key in ``steps``)."""
    timed: dict[int, str] = {}
    for k, peer_spec in enumerate(row.spec.peers):
        if k in entries:
            continue
        if peer_spec.label in steps:
            entries[k] = peer_entry(peer_spec, "error", "the same peer twice in this row")
            continue
        try:
            if peer_spec.is_runtime:
                entry, step = _runtime_peer(peer_spec, exported, kind, inputs, row.threads, row.record, reference,
                                            row.rtol)
            else:
                entry, step = _torch_peer(peer_spec, row.peer_seed(k), row.config, kind, row.size, row.batch,
                                          row.mode, row.amp, row.threads, reference, row.rtol)
        except Exception as exc:  # noqa: BLE001  a failing peer is reported; our row still counts
            traceback.print_exc(file=sys.stderr)
            entries[k] = peer_entry(peer_spec, "error", describe(exc))
            continue
        if entry["diff_ok"] is False:  # still timed, but the row says so
            entry.update(status="error", reason=f"outputs differ from ours: {entry['diff_note']}")
        entries[k], steps[peer_spec.label], timed[k] = entry, step, peer_spec.label
    return timed


def _time_row(row: _Row, steps: dict[str, Any], entries: dict[int, dict[str, Any]], timed: dict[int, str]) -> None:
    """Times ours and the peers in turns; fills the latencies and each peer's ratios into the record."""
    record, batch = row.record, row.batch
    times = time_interleaved(steps, row.device, row.config.warmup, row.config.repeats)
    record.update(summarize(times.pop("ours"), batch))
    for k, label in timed.items():
        entries[k].update(summarize(times[label], batch))
        entries[k]["ratio"] = record["throughput"] / entries[k]["throughput"]
        entries[k]["ratio_best"] = entries[k]["latency_min_ms"] / record["latency_min_ms"]
    record["peers"] = [entries[k] for k in sorted(entries)]


def _fill_best_peer(record: dict[str, Any]) -> None:
    """The fastest fine peer's figures and ratios in the record; ``peer_error`` if a peer failed."""
    peers = record["peers"]
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


def _measure_row(config: BenchConfig, spec: ModelSpec, size: int, batch: int, workdir: str) -> dict[str, Any]:
    """:func:`measure_row`, with ``workdir`` for the ONNX export."""
    row = _setup_row(config, spec, size, batch)
    ours, kind = _build_ours(row)
    entries, exported = _export_for_runtimes(row, ours, kind, workdir)
    ours = _prepare_ours(row, ours, kind)
    inputs, step, reference = _ours_step(row, ours, kind)
    steps = {"ours": step}
    timed = _add_peers(row, kind, inputs, exported, reference, entries, steps)
    _time_row(row, steps, entries, timed)
    _fill_best_peer(row.record)
    return row.record


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
