"""Benchmark library behind ``tools/benchmark.py``: config schema, model builders, measurements,
the per-row subprocess worker and the reports (Markdown, CSV, JSON, plot)."""

from backbones_tools.bench.config import BenchConfig, ModelSpec, PeerSpec, load_bench_config
from backbones_tools.bench.runner import expand_rows, run_benchmark

__all__ = ["BenchConfig", "ModelSpec", "PeerSpec", "expand_rows", "load_bench_config", "run_benchmark"]
