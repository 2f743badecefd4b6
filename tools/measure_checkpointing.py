"""Measure what per-block gradient checkpointing saves in a training step of a backbone.

Each setting runs in a fresh subprocess; on CPU the figure is the growth of the process's peak
resident memory during one forward + backward (after the model and input exist), on CUDA the
peak allocated memory of the step.

    python tools/measure_checkpointing.py --backbone resnet101 --size 512 --batch 2
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def run_one(backbone: str, size: int, batch: int, checkpointing: bool, device: str) -> dict:
    """One training step in this process; returns the memory it took and its time."""
    import torch

    from backbones import create_backbone

    torch.manual_seed(0)
    model = create_backbone(backbone, checkpointing=checkpointing).to(device).train()
    x = torch.randn(batch, 3, size, size, device=device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.max_memory_allocated() / 2**20
    else:
        before = _peak_rss_mb()
    start = time.perf_counter()
    out = model(x)
    sum(v.float().square().mean() for v in out.values()).backward()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = _peak_rss_mb()
    return {"checkpointing": checkpointing, "step_mem_mb": round(peak - before, 1), "step_s": round(time.perf_counter() - start, 2)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet101")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--child", choices=["on", "off"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = run_one(args.backbone, args.size, args.batch, args.child == "on", args.device)
        print(json.dumps(result))
        return
    rows = []
    for setting in ("off", "on"):
        cmd = [sys.executable, __file__, "--backbone", args.backbone, "--size", str(args.size),
               "--batch", str(args.batch), "--device", args.device, "--child", setting]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    off, on = rows
    print(f"{args.backbone} {args.size}x{args.size} batch {args.batch} on {args.device}: one training step")
    for row in rows:
        print(f"  checkpointing={str(row['checkpointing']):5}  step memory {row['step_mem_mb']:8.1f} MiB  time {row['step_s']:.2f} s")
    print(f"  memory cut: {1 - on['step_mem_mb'] / off['step_mem_mb']:.1%}, time x{on['step_s'] / off['step_s']:.2f}")


if __name__ == "__main__":
    main()
