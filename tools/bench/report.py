"""Reports of a benchmark run: Markdown table, ``results.csv``, ``results.json`` and a plot."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Sequence

from backbones_tools.bench.config import RUNTIME_SOURCES

#: Scalar columns of results.csv, in order (results.json also has the per-peer list ``peers``).
CSV_FIELDS = (
    "model", "type", "input_size", "batch", "mode", "dtype", "amp", "memory_format", "device", "hardware", "optimized",
    "compiled", "onednn_graph", "threads", "allocator", "params", "gmacs", "latency_ms", "latency_p10_ms",
    "latency_p90_ms", "latency_min_ms",
    "throughput", "peak_mem_mb", "peer", "peer_throughput", "peer_latency_ms", "peer_gmacs", "ratio", "ratio_best",
    "status", "error",
)
#: Columns of peers.csv: one line per peer of every row.
PEER_CSV_FIELDS = (
    "model", "input_size", "batch", "mode", "peer", "source", "version", "status", "reason", "latency_ms",
    "latency_p10_ms", "latency_p90_ms", "latency_min_ms", "throughput", "ratio", "ratio_best", "max_abs_diff", "diff_tol", "diff_ok",
    "diff_note", "settings",
)


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _ratio(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _cell(text: Any) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def _measured(r: dict[str, Any]) -> bool:
    return r.get("latency_ms") is not None


def hardware_lines(records: Sequence[dict[str, Any]]) -> list[str]:
    """What the figures were measured on: one line per distinct (hardware, device, threads, allocator)."""
    seen = []
    for r in records:
        key = (r.get("hardware"), r.get("device"), r.get("threads"), r.get("allocator"))
        if key[0] and key not in seen:
            seen.append(key)
    return [f"Measured on {hw} ({device}, {threads} threads" + (f", {alloc})" if alloc else ")")
            for hw, device, threads, alloc in seen]


def main_table(records: Sequence[dict[str, Any]]) -> str:
    """One line per row: size, cost, latency (median [p10, p90]), throughput, memory, fastest peer, ratio
    (medians) and the same ratio from each one's fastest run."""
    head = ("| model | size | batch | mode | params (M) | GMACs | latency ms (p10-p90) | img/s | peak MB "
            "| peer | peer img/s | ratio | ratio (fastest runs) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in records:
        mode = r["mode"] if r.get("amp", "none") in ("none", None) else f"{r['mode']} ({r['amp']})"
        if not _measured(r):
            lines.append(f"| {r['model']} | {r['input_size']} | {r['batch']} | {mode} | FAILED: {_cell(r.get('error'))} "
                         "| - | - | - | - | - | - | - | - |")
            continue
        params = None if r["params"] is None else r["params"] / 1e6
        latency = f"{r['latency_ms']:.1f} ({r['latency_p10_ms']:.1f}-{r['latency_p90_ms']:.1f})"
        lines.append(
            f"| {r['model']} | {r['input_size']} | {r['batch']} | {mode} | {_num(params, '.2f')} "
            f"| {_num(r['gmacs'], '.2f')} | {latency} | {_num(r['throughput'], '.2f')} | {_num(r['peak_mem_mb'], '.0f')} "
            f"| {r['peer'] or '-'} | {_num(r['peer_throughput'], '.2f')} | {_ratio(r['ratio'])} "
            f"| {_ratio(r.get('ratio_best'))} |"
        )
    return "\n".join(lines)


def _check(p: dict[str, Any]) -> str:
    if p["status"] == "skipped":
        return f"skipped: {_cell(p['reason'])}"
    if p["status"] == "error" and p.get("diff_ok") is not False:
        return f"ERROR: {_cell(p['reason'])}"
    if p.get("diff_ok") is None:
        return _cell(p.get("diff_note") or "not compared")
    word = "ok" if p["diff_ok"] else "MISMATCH"
    return f"{word}: {_cell(p['diff_note'])}" if p.get("diff_note") else word


def peers_table(records: Sequence[dict[str, Any]]) -> str:
    """One line per peer of every measured row: its latency and throughput timed in turns with ours,
    ours/peer (above 1: ours is faster), and the check of its outputs against ours."""
    head = ("| model | size | batch | mode | peer | latency ms (p10-p90) | img/s | ours/peer | ours/peer (fastest runs) "
            "| max abs diff (tol) | check |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in records:
        for p in r.get("peers", []):
            name = p["peer"] + (f" {p['version']}" if p.get("version") and p["source"] in RUNTIME_SOURCES else "")
            if p.get("latency_ms") is None:
                lines.append(f"| {r['model']} | {r['input_size']} | {r['batch']} | {r['mode']} | {name} | - | - | - | - "
                             f"| - | {_check(p)} |")
                continue
            latency = f"{p['latency_ms']:.1f} ({p['latency_p10_ms']:.1f}-{p['latency_p90_ms']:.1f})"
            diff = "-" if p.get("max_abs_diff") is None else f"{p['max_abs_diff']:.1e} ({_num(p.get('diff_tol'), '.1e')})"
            lines.append(f"| {r['model']} | {r['input_size']} | {r['batch']} | {r['mode']} | {name} | {latency} "
                         f"| {_num(p['throughput'], '.2f')} | {_ratio(p['ratio'])} | {_ratio(p.get('ratio_best'))} "
                         f"| {diff} | {_check(p)} |")
    return "\n".join(lines)


def markdown_table(records: Sequence[dict[str, Any]]) -> str:
    """The hardware line(s), the table of rows and, when rows have peers, the table of peers."""
    parts = ["\n".join(hardware_lines(records)), main_table(records)]
    if any(r.get("peers") for r in records):
        parts.append("Peers (timed in turns with ours; ours/peer > 1: ours is faster; max abs diff: the peer's outputs "
                     "against ours, same weights and input; train_step: the first step's loss):\n\n" + peers_table(records))
    return "\n\n".join(part for part in parts if part)


def write_csv(records: Sequence[dict[str, Any]], path: Path) -> None:
    """``results.csv``: the scalar fields of every record."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)


def write_peers_csv(records: Sequence[dict[str, Any]], path: Path) -> None:
    """``peers.csv``: one line per peer of every row."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=PEER_CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for r in records:
            for p in r.get("peers", []):
                writer.writerow({**{k: r[k] for k in ("model", "input_size", "batch", "mode")}, **p})


def write_json(records: Sequence[dict[str, Any]], path: Path, meta: dict[str, Any] | None = None) -> None:
    """``results.json``: ``{"meta": ..., "results": [record, ...]}``."""
    path.write_text(json.dumps({"meta": meta or {}, "results": list(records)}, indent=2), encoding="utf-8")


def write_plot(records: Sequence[dict[str, Any]], path: Path) -> None:
    """Throughput against GMACs per image: our rows as dots, their peers as crosses joined by a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    ok = [r for r in records if _measured(r) and r.get("gmacs") and r.get("throughput")]
    for r in ok:
        label = f"{r['model']} {r['input_size']}px x{r['batch']}"
        ax.scatter(r["gmacs"], r["throughput"], color="tab:blue", zorder=3)
        ax.annotate(label, (r["gmacs"], r["throughput"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        for peer in r.get("peers", []):
            if peer.get("gmacs") and peer.get("throughput"):
                ax.scatter(peer["gmacs"], peer["throughput"], color="tab:orange", marker="x", zorder=3)
                ax.plot([r["gmacs"], peer["gmacs"]], [r["throughput"], peer["throughput"]], color="0.8", lw=0.8, zorder=1)
    ax.scatter([], [], color="tab:blue", label="ours")
    ax.scatter([], [], color="tab:orange", marker="x", label="peers (torchvision / timm / runtimes)")
    ax.set_xlabel("GMACs per image")
    ax.set_ylabel("throughput (images/s)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_reports(records: Sequence[dict[str, Any]], output_dir: Path, meta: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write results.csv, peers.csv, results.json, results.md and throughput_vs_gmacs.png into ``output_dir``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "csv": output_dir / "results.csv",
        "peers_csv": output_dir / "peers.csv",
        "json": output_dir / "results.json",
        "markdown": output_dir / "results.md",
        "plot": output_dir / "throughput_vs_gmacs.png",
    }
    write_csv(records, paths["csv"])
    write_peers_csv(records, paths["peers_csv"])
    write_json(records, paths["json"], meta)
    paths["markdown"].write_text(markdown_table(records) + "\n", encoding="utf-8")
    write_plot(records, paths["plot"])
    return paths
