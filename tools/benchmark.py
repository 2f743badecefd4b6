"""Benchmark models of this package side by side with torchvision/timm, from a YAML config.

    python tools/benchmark.py --config configs/bench/backbones_cpu.yaml [--set repeats=5 ...]
                              [--output-dir bench_results/backbones_cpu]

Each row (model x input size x batch size) runs in a fresh subprocess: parameters, GMACs
(``FlopCounterMode``), latency (median, p10, p90), throughput, peak memory, and the ratio to the
fastest of its peers measured in turns with it. Writes a Markdown table (console and
``results.md``), ``results.csv``, ``results.json`` and ``throughput_vs_gmacs.png``.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file (python tools/x.py): tools/ itself must not shadow
    sys.path.pop(0)            # top-level modules; the package is imported as backbones_tools

from backbones_tools.bench.config import load_bench_config  # noqa: E402
from backbones_tools.bench.report import markdown_table, write_reports  # noqa: E402
from backbones_tools.bench.runner import run_benchmark  # noqa: E402
from backbones_tools.config.loader import ConfigError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 0, or 1 when a row failed (the others still ran), 2 on a bad config."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="benchmark YAML (configs/bench/*.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set repeats=3 --set device=cuda")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="where to write the reports (default: bench_results/<config name>)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        config = load_bench_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    output_dir = args.output_dir or Path("bench_results") / Path(args.config).stem
    records = run_benchmark(config, progress=not args.no_progress)
    import torch

    meta = {"config": str(args.config), "overrides": args.overrides, "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(), "settings": config.model_dump(mode="json", exclude={"models"})}
    paths = write_reports(records, output_dir, meta)
    print(markdown_table(records))
    print(f"\nwrote {', '.join(str(p) for p in paths.values())}")
    return 1 if any(r["status"] != "ok" for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
