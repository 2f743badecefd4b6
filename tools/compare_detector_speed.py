"""Inference time of this package's Faster R-CNN R50-FPN next to torchvision's, same weights and input.

    python tools/compare_detector_speed.py --size 800 --repeats 5 [--device cuda] [--threads N]

Both models get the same random weights (no download); runs alternate between the two so that load
on the machine affects both alike; the median of the repeats is reported.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torchvision.models.detection import fasterrcnn_resnet50_fpn

from heads import build_detector, load_torchvision_weights


def _timed(model: torch.nn.Module, batch: list[torch.Tensor], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode():
        model(batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the comparison and print one line per model; returns the medians in seconds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=800, help="square input side in pixels (also min_size)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per model")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per model first")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    args = parser.parse_args(argv)
    if args.size < 32 or args.repeats < 1 or args.warmup < 0:
        parser.error("--size must be >= 32, --repeats >= 1 and --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    torch.manual_seed(0)
    sizes = dict(min_size=args.size, max_size=max(1333, args.size))
    stock = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, **sizes).eval().to(device)
    ours = build_detector("faster_rcnn", backbone="resnet50", num_classes=91, **sizes).eval()
    load_torchvision_weights(ours, stock.state_dict())
    ours.to(device)
    batch = [torch.rand(3, args.size, args.size, device=device)]

    models = {"ours (heads.build_detector)": ours, "torchvision fasterrcnn_resnet50_fpn": stock}
    for _ in range(args.warmup):
        for model in models.values():
            _timed(model, batch, device)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, model in models.items():
            times[name].append(_timed(model, batch, device))

    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"Faster R-CNN R50-FPN, {args.size}x{args.size}, batch 1, {device}, threads={torch.get_num_threads()}, "
          f"median of {args.repeats}")
    for name, value in medians.items():
        print(f"  {name:40s} {value * 1000:9.1f} ms   (runs: {', '.join(f'{t * 1000:.0f}' for t in times[name])})")
    ours_t, stock_t = medians.values()
    best_ours, best_stock = (min(values) for values in times.values())
    print(f"  ratio ours / torchvision: {ours_t / stock_t:.3f} (medians), {best_ours / best_stock:.3f} (fastest runs,"
          " the steadier figure on a loaded machine)")
    return medians


if __name__ == "__main__":
    main()
