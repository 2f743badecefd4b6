"""Run every row of a benchmark config, each in a fresh subprocess (or in this process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from backbones_tools.bench.config import BenchConfig, ModelSpec


@dataclass(frozen=True)
class Row:
    """One measurement: a model of the config at one input size and batch size."""

    model_index: int
    spec: ModelSpec
    size: int
    batch: int

    @property
    def title(self) -> str:
        return f"{self.spec.name} {self.size}px x{self.batch}"


def expand_rows(config: BenchConfig) -> list[Row]:
    """The grid of rows: each model at each of its input sizes and batch sizes."""
    rows = []
    for i, spec in enumerate(config.models):
        for size in spec.input_sizes or config.input_sizes:
            for batch in spec.batch_sizes or config.batch_sizes:
                rows.append(Row(i, spec, size, batch))
    return rows


def _subprocess_env(config: BenchConfig) -> dict[str, str]:
    env = dict(os.environ)
    if config.threads:
        env["OMP_NUM_THREADS"] = str(config.threads)
    return env


def row_request(config: BenchConfig, row: Row) -> dict[str, Any]:
    """What the worker process reads: the config as it was given (fields set, defaults left out,
    so that it validates again as it did here: a runtime peer refuses an explicit ``name``), and
    the row."""
    return {"config": config.model_dump(mode="json", exclude_unset=True), "model_index": row.model_index,
            "size": row.size, "batch": row.batch}


def run_row_subprocess(config: BenchConfig, row: Row) -> dict[str, Any]:
    """Measure ``row`` in a fresh Python process; a crash, kill or timeout becomes an error record."""
    from backbones_tools.bench.worker import RESULT_PREFIX, error_record

    request = json.dumps(row_request(config, row))
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "backbones_tools.bench.worker"],
            input=request,
            capture_output=True,
            text=True,
            timeout=config.row_timeout_s,
            env=_subprocess_env(config),
        )
    except subprocess.TimeoutExpired:
        return error_record(config, row.spec, row.size, row.batch, f"timed out after {config.row_timeout_s:g} s")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    if proc.returncode < 0:
        reason = f"killed by signal {-proc.returncode}" + (" (out of memory?)" if proc.returncode == -9 else "")
    else:
        reason = f"worker exited with status {proc.returncode}"
    tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
    return error_record(config, row.spec, row.size, row.batch, f"{reason}: {tail}" if tail else reason)


def run_benchmark(config: BenchConfig, *, progress: bool = True) -> list[dict[str, Any]]:
    """Measure every row of ``config``; returns one record per row (failed rows included)."""
    from backbones_tools.bench.worker import run_row_safely

    rows = expand_rows(config)
    records = []
    bar = tqdm(rows, desc="benchmark", unit="row", disable=not progress, file=sys.stderr)
    for row in bar:
        bar.set_postfix_str(row.title)
        if config.isolate:
            records.append(run_row_subprocess(config, row))
        else:
            records.append(run_row_safely(config, row.spec, row.size, row.batch))
    return records
