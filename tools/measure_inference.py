"""Measure the CPU inference levers of ``optimize_for_inference`` one by one, each against the same
model without it, in turns: freed memory kept (page faults per forward pass), in-place residual
adds, weights reordered once, linear layers as oneDNN inner products, the box head on channels-last
RoI features, Winograd 3x3 convolutions, and optionally the oneDNN Graph path (``OneDnnGraph``) and
``torch.compile`` with inductor freezing.
Backs the figures in the README's Performance section.

    python tools/measure_inference.py [--model resnet50] [--batch 8] [--size 224] [--threads 2]
                                      [--rounds 20] [--onednn-graph] [--compile]

Page faults are compared in two fresh processes (the allocator setting cannot be undone); the other
levers are switched off and on in one process, which prints the median of each.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator


def _median_ms(runs: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Each callable once per round, in turns, after one warm-up call each; median milliseconds."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():
        run()
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1000 for name, t in times.items()}


def _trunk(args: argparse.Namespace):
    import torch

    from backbones import create_backbone, optimize_for_inference

    torch.set_num_threads(args.threads)
    model = optimize_for_inference(create_backbone(args.model, out_features=["c5"]).eval())
    x = torch.randn(args.batch, 3, args.size, args.size).contiguous(memory_format=torch.channels_last)
    return model, x


def _faults_child(args: argparse.Namespace) -> None:
    """In a fresh process: page faults and median time of a forward pass, with or without the setting."""
    import torch

    from backbones import keep_freed_memory

    if args.child == "keep":
        keep_freed_memory()
    model, x = _trunk(args)
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        ms = _median_ms({"forward": lambda: model(x)}, args.rounds)["forward"]
        faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / (args.rounds + 1)
    print(json.dumps({"ms": ms, "faults": faults}))


def _page_faults(args: argparse.Namespace, argv: list[str]) -> None:
    seen = {}
    for mode in ("default", "keep", "default", "keep"):  # two fresh processes each, in turns
        out = subprocess.run([sys.executable, __file__, *argv, "--child", mode], capture_output=True, text=True,
                             check=True)
        seen.setdefault(mode, []).append(json.loads(out.stdout.strip().splitlines()[-1]))
    for mode, label in (("default", "glibc defaults"), ("keep", "keep_freed_memory()")):
        ms = statistics.median(r["ms"] for r in seen[mode])
        faults = statistics.median(r["faults"] for r in seen[mode])
        print(f"  {label:24s} {ms:7.1f} ms, {faults:8.0f} page faults per forward pass")


@contextlib.contextmanager
def _without(lever: str) -> Iterator[None]:
    """Switch one lever of the fused convolutions off for the duration."""
    from backbones import compat
    from backbones.inference import FusedConv2d

    if lever == "in-place residual adds":
        saved, compat._ONEDNN_POINTWISE_INPLACE = compat._ONEDNN_POINTWISE_INPLACE, None
        try:
            yield
        finally:
            compat._ONEDNN_POINTWISE_INPLACE = saved
    else:  # weights reordered once
        saved_method = FusedConv2d._onednn_weight
        FusedConv2d._onednn_weight = lambda self, x: self.weight
        try:
            yield
        finally:
            FusedConv2d._onednn_weight = saved_method


def _levers(args: argparse.Namespace) -> None:
    import torch

    model, x = _trunk(args)

    def run_without(lever: str) -> Callable[[], object]:
        def run() -> object:
            with _without(lever):
                return model(x)
        return run

    with torch.inference_mode():
        for lever in ("in-place residual adds", "weights reordered once"):
            times = _median_ms({"on": lambda: model(x), "off": run_without(lever)}, args.rounds)
            print(f"  {lever:24s} on {times['on']:7.1f} ms, off {times['off']:7.1f} ms "
                  f"({times['off'] / times['on'] - 1:+.1%} without)")


def _linear(args: argparse.Namespace) -> None:
    """The box head's fc6: 1,000 RoIs x 12,544 (256 x 7 x 7) -> 1,024."""
    import torch
    import torch.nn.functional as F

    from backbones.compat import onednn_linear

    x, weight, bias = torch.randn(1000, 12544), torch.randn(1024, 12544), torch.randn(1024)
    with torch.inference_mode():
        diff = (onednn_linear(x, weight, bias) - F.linear(x, weight, bias)).abs().max().item()
        times = _median_ms({"addmm": lambda: F.linear(x, weight, bias),
                            "oneDNN": lambda: onednn_linear(x, weight, bias)}, args.rounds)
    print(f"  fc6 1000x12544 -> 1024   addmm {times['addmm']:6.1f} ms, oneDNN inner product {times['oneDNN']:6.1f} ms "
          f"(max abs diff {diff:.1e})")


def _box_head(args: argparse.Namespace) -> None:
    """A Faster R-CNN box head on the gather pooler's channels-last RoI features (1,000 x 256 x 7 x 7):
    torchvision's, which copies them into NCHW order to flatten them, against ChannelsLastTwoMLPHead."""
    import torch
    from torchvision.models.detection.faster_rcnn import TwoMLPHead

    from backbones.inference import fuse_activations
    from heads import ChannelsLastTwoMLPHead

    head = TwoMLPHead(256 * 7 * 7, 1024).eval()
    fuse_activations(head)  # fc6 and fc7 as oneDNN inner products, as optimize_for_inference leaves them
    fast = ChannelsLastTwoMLPHead.from_head(head)
    rois = torch.randn(1000, 256, 7, 7).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        diff = (fast(rois) - head(rois)).abs().max().item()
        times = _median_ms({"torchvision": lambda: head(rois), "channels-last": lambda: fast(rois)}, args.rounds)
    print(f"  box head, 1000 RoIs       torchvision's {times['torchvision']:6.1f} ms, "
          f"ChannelsLastTwoMLPHead {times['channels-last']:6.1f} ms (max abs diff {diff:.1e})")


def _winograd(args: argparse.Namespace) -> None:
    """Single 3x3 layers (+ bias + ReLU) as oneDNN's direct convolution and as a Winograd one (both
    with their weights prepacked, as ``FusedConv2d`` runs them), and whether ``winograd_pays`` picks
    Winograd for them."""
    import torch
    import torch.nn.functional as F

    from backbones.compat import onednn_conv_pointwise, onednn_prepack_weight
    from backbones.winograd import winograd_conv3x3, winograd_pays, winograd_weight
    from backbones_tools.bench.measure import winograd_transforms

    print(f"  Winograd transforms: {winograd_transforms()}")
    for batch, channels, size in ((1, 256, 200), (1, 256, 100), (1, 256, 50), (1, 128, 100), (8, 128, 28),
                                  (8, 256, 14), (8, 512, 7), (8, 64, 56), (4, 64, 56), (1, 64, 200), (8, 52, 28),
                                  (16, 52, 28), (8, 104, 14), (8, 208, 7), (8, 26, 56), (1, 512, 7)):
        x = torch.randn(batch, channels, size, size).contiguous(memory_format=torch.channels_last)
        weight = (torch.randn(channels, channels, 3, 3) / (3 * channels**0.5)).contiguous(
            memory_format=torch.channels_last)
        bias = torch.randn(channels) / 10
        packed = winograd_weight(weight, bias, input_shape=x.shape)
        geometry = {"padding": (1, 1), "stride": (1, 1), "dilation": (1, 1), "groups": 1}
        options = {**geometry, "relu": True}
        direct = onednn_prepack_weight(weight, **geometry, input_shape=x.shape)
        with torch.inference_mode():
            exact = F.relu(F.conv2d(x.double(), weight.double(), bias.double(), padding=1))
            errors = [(out.double() - exact).abs().max().item() / exact.abs().max().item() for out in
                      (onednn_conv_pointwise(x, direct, bias, **options), winograd_conv3x3(x, *packed, relu=True))]
            times = _median_ms({"direct": lambda: onednn_conv_pointwise(x, direct, bias, **options),
                                "winograd": lambda: winograd_conv3x3(x, *packed, relu=True)}, args.rounds)
        print(f"  3x3 {channels:3d} ch on {batch}x{size:3d}x{size:<3d}   direct {times['direct']:6.1f} ms, "
              f"Winograd {times['winograd']:6.1f} ms ({times['direct'] / times['winograd']:.2f}x; "
              f"error vs fp64 {errors[0]:.1e} / {errors[1]:.1e} of the scale; "
              f"{'used' if winograd_pays(x, channels, channels) else 'not used'})")


def _onednn_graph(args: argparse.Namespace) -> None:
    import torch

    from backbones import OneDnnGraph, create_backbone

    model, x = _trunk(args)
    graph = OneDnnGraph(create_backbone(args.model, out_features=["c5"]).eval())
    with torch.inference_mode():
        start = time.perf_counter()
        graph(x)
        print(f"  oneDNN graph (OneDnnGraph): traced and fused in {time.perf_counter() - start:.0f} s")
        times = _median_ms({"eager": lambda: model(x), "graph": lambda: graph(x)}, args.rounds)
    print(f"  eager (optimize_for_inference) {times['eager']:7.1f} ms, oneDNN graph {times['graph']:7.1f} ms "
          f"({times['eager'] / times['graph'] - 1:+.1%} faster)")


def _compiled(args: argparse.Namespace) -> None:
    import torch
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    model, x = _trunk(args)
    compiled = torch.compile(model)
    with torch.no_grad():
        start = time.perf_counter()
        compiled(x)
        print(f"  torch.compile (freezing): compiled in {time.perf_counter() - start:.0f} s")
        times = _median_ms({"eager": lambda: model(x), "compiled": lambda: compiled(x)}, args.rounds)
    print(f"  eager (optimize_for_inference) {times['eager']:7.1f} ms, compiled {times['compiled']:7.1f} ms")


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20, help="timed calls per contender (in turns)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile with inductor freezing")
    parser.add_argument("--onednn-graph", action="store_true",
                        help="also time backbones.OneDnnGraph (TorchScript + oneDNN Graph fusion)")
    parser.add_argument("--child", choices=["default", "keep"], help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    from backbones import list_backbones

    if args.model not in list_backbones():
        parser.error(f"--model: unknown backbone {args.model!r} (backbones: {', '.join(list_backbones())})")
    if min(args.batch, args.size, args.threads, args.rounds) < 1:
        parser.error("--batch, --size, --threads and --rounds must be positive")
    if args.child:
        _faults_child(args)
        return 0
    print(f"{args.model}, batch {args.batch} at {args.size} px, {args.threads} threads, fp32:")
    _page_faults(args, argv)
    from backbones import keep_freed_memory

    keep_freed_memory()  # the other levers are measured as the tools run them
    _levers(args)
    _linear(args)
    _box_head(args)
    _winograd(args)
    if args.onednn_graph:
        _onednn_graph(args)
    if args.compile:
        _compiled(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
