"""Time the detectors' RoI-align as a gather (``heads.inference.roi_align_gather``) against
torchvision's CPU kernel on a P2-sized map, in turns, and check they agree.

    python tools/measure_roi_align.py [--rois 600] [--size 200] [--channels 256] [--threads 2] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: prints both medians, the ratio and the largest difference."""
    import torch
    from torchvision.ops import roi_align

    from heads.inference import roi_align_gather

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rois", type=int, default=600)
    parser.add_argument("--size", type=int, default=200, help="P2 side (an 800x800 image at stride 4)")
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    features = torch.randn(1, args.channels, args.size, args.size, generator=g).to(memory_format=torch.channels_last)
    corner = torch.rand(args.rois, 2, generator=g) * args.size * 3
    rois = torch.cat([torch.zeros(args.rois, 1), corner, corner + 8 + torch.rand(args.rois, 2, generator=g) * 200], 1)
    kwargs = dict(output_size=(7, 7), spatial_scale=0.25, sampling_ratio=2, aligned=False)
    contenders = {"torchvision roi_align": lambda: roi_align(features, rois, **kwargs),
                  "gather (heads)": lambda: roi_align_gather(features, rois, **kwargs)}
    times: dict[str, list[float]] = {name: [] for name in contenders}
    with torch.inference_mode():
        diff = (contenders["gather (heads)"]() - contenders["torchvision roi_align"]()).abs().max().item()
        for _ in range(args.rounds):
            for name, run in contenders.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    tv, ours = (statistics.median(times[k]) for k in contenders)
    print(f"{args.rois} RoIs on a {args.channels}x{args.size}x{args.size} map, {args.threads} threads: "
          f"torchvision {tv * 1000:.1f} ms, gather {ours * 1000:.1f} ms, {tv / ours:.1f}x; max abs diff {diff:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
