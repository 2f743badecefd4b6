"""Reports of a benchmark run: Markdown table, ``results.csv``, ``results.json`` and a plot."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Sequence

#: Scalar columns of results.csv, in order (results.json also has the per-peer list ``peers``).
CSV_FIELDS = (
    "model", "type", "input_size", "batch", "mode", "dtype", "memory_format", "device", "optimized", "compiled",
    "threads", "params", "gmacs", "latency_ms", "latency_p10_ms", "latency_p90_ms", "latency_min_ms", "throughput",
    "peak_mem_mb", "peer", "peer_throughput", "peer_latency_ms", "peer_gmacs", "ratio", "ratio_best", "status", "error",
)


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def markdown_table(records: Sequence[dict[str, Any]]) -> str:
    """One line per row: size, cost, latency (median [p10, p90]), throughput, memory, peer, ratio."""
    head = ("| model | size | batch | mode | params (M) | GMACs | latency ms (p10-p90) | img/s | peak MB "
            "| peer | peer img/s | ratio |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in records:
        if r.get("status") != "ok":
            error = str(r.get("error")).replace("|", "/")
            lines.append(f"| {r['model']} | {r['input_size']} | {r['batch']} | {r['mode']} | FAILED: {error} "
                         "| - | - | - | - | - | - | - |")
            continue
        params = None if r["params"] is None else r["params"] / 1e6
        latency = f"{r['latency_ms']:.1f} ({r['latency_p10_ms']:.1f}-{r['latency_p90_ms']:.1f})"
        lines.append(
            f"| {r['model']} | {r['input_size']} | {r['batch']} | {r['mode']} | {_num(params, '.2f')} "
            f"| {_num(r['gmacs'], '.2f')} | {latency} | {_num(r['throughput'], '.2f')} | {_num(r['peak_mem_mb'], '.0f')} "
            f"| {r['peer'] or '-'} | {_num(r['peer_throughput'], '.2f')} | {_num(r['ratio'], '.2f')}x |"
        )
    return "\n".join(lines).replace("| -x |", "| - |")


def write_csv(records: Sequence[dict[str, Any]], path: Path) -> None:
    """``results.csv``: the scalar fields of every record."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)


def write_json(records: Sequence[dict[str, Any]], path: Path, meta: dict[str, Any] | None = None) -> None:
    """``results.json``: ``{"meta": ..., "results": [record, ...]}``."""
    path.write_text(json.dumps({"meta": meta or {}, "results": list(records)}, indent=2), encoding="utf-8")


def write_plot(records: Sequence[dict[str, Any]], path: Path) -> None:
    """Throughput against GMACs per image: our rows as dots, their peers as crosses joined by a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    ok = [r for r in records if r.get("status") == "ok" and r.get("gmacs") and r.get("throughput")]
    for r in ok:
        label = f"{r['model']} {r['input_size']}px x{r['batch']}"
        ax.scatter(r["gmacs"], r["throughput"], color="tab:blue", zorder=3)
        ax.annotate(label, (r["gmacs"], r["throughput"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        for peer in r.get("peers", []):
            if peer.get("gmacs") and peer.get("throughput"):
                ax.scatter(peer["gmacs"], peer["throughput"], color="tab:orange", marker="x", zorder=3)
                ax.plot([r["gmacs"], peer["gmacs"]], [r["throughput"], peer["throughput"]], color="0.8", lw=0.8, zorder=1)
    ax.scatter([], [], color="tab:blue", label="ours")
    ax.scatter([], [], color="tab:orange", marker="x", label="peers (torchvision / timm)")
    ax.set_xlabel("GMACs per image")
    ax.set_ylabel("throughput (images/s)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_reports(records: Sequence[dict[str, Any]], output_dir: Path, meta: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write results.csv, results.json, results.md and throughput_vs_gmacs.png into ``output_dir``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "csv": output_dir / "results.csv",
        "json": output_dir / "results.json",
        "markdown": output_dir / "results.md",
        "plot": output_dir / "throughput_vs_gmacs.png",
    }
    write_csv(records, paths["csv"])
    write_json(records, paths["json"], meta)
    paths["markdown"].write_text(markdown_table(records) + "\n", encoding="utf-8")
    write_plot(records, paths["plot"])
    return paths
