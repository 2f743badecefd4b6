"""Export a backbone, an FPN backbone or a trained segmenter/detector to ONNX and check it in ONNX
Runtime against PyTorch.

    python tools/export.py --backbone resnet50 --out resnet50.onnx
    python tools/export.py --backbone res2net50_26w_4s --fpn --weights r2n50.pth --out r2n50_fpn.onnx
    python tools/export.py --checkpoint runs/seg/<run>/best.pth --out deeplab.onnx --image photo.jpg
    python tools/export.py --checkpoint runs/det/<run>/best.pth [--part backbone] --out det.onnx
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file (python tools/x.py): tools/ itself must not shadow
    sys.path.pop(0)            # top-level modules; the package is imported as backbones_tools

from backbones_tools.cli_args import add_debug  # noqa: E402

EPILOG = """\
examples:
  # a ResNet-50 trunk (random weights), outputs stem c2 c3 c4 c5, dynamic batch/height/width
  python tools/export.py --backbone resnet50 --out resnet50.onnx
  # a Res2Net-50 FPN backbone (outputs p2..p6) with ImageNet trunk weights, checked on a photo too
  python tools/export.py --backbone res2net50_26w_4s --fpn --weights res2net50.pth \\
      --out r2n50_fpn.onnx --image photo.jpg
  # a trained DeepLab (output "out": logits) or detector (boxes, labels, scores) of tools/train_*.py
  python tools/export.py --checkpoint runs/seg/demo_shapes_deeplabv3plus_r18/best.pth --out seg.onnx
  python tools/export.py --checkpoint runs/det/demo_shapes_faster_rcnn_r18/best.pth --out det.onnx
  python tools/export.py --checkpoint runs/det/demo_shapes_faster_rcnn_r18/best.pth --part backbone --out fpn.onnx

After export the model runs in ONNX Runtime (CPU) on random inputs (two sizes, two batch sizes) and,
with --image, on a real image; the max abs difference to PyTorch is printed per output. Exit status:
0 all outputs within tolerance (max|diff| <= 1e-4 x max|output| + 1e-6), 1 an output differs or the
exporter failed, 2 a usage error (unknown backbone, missing file, bad checkpoint, onnx/onnxruntime
not installed: pip install -e ".[export]").
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tools/export.py", description=__doc__.splitlines()[0] + " " + __doc__.splitlines()[1].strip(),
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--backbone", metavar="NAME", help="backbone variant (backbones.list_backbones())")
    source.add_argument("--checkpoint", metavar="RUN/best.pth", help="training checkpoint of tools/train_det.py or train_seg.py")
    parser.add_argument("--out", required=True, metavar="FILE.onnx", help="ONNX file to write")
    parser.add_argument("--out-features", nargs="+", metavar="TAP",
                        help="--backbone: taps to export among stem c2 c3 c4 c5 (default: all; with --fpn c2..c5)")
    parser.add_argument("--fpn", action="store_true", help="--backbone: export the trunk with an FPN (outputs p2..p6)")
    parser.add_argument("--fpn-channels", type=int, default=256, help="--fpn: channels of the pyramid (default 256)")
    parser.add_argument("--weights", metavar="FILE",
                        help="--backbone: trunk checkpoint (torchvision, timm, Res2Net, detectron2, MMDetection, ...)")
    parser.add_argument("--part", choices=("model", "backbone"), default="model",
                        help="--checkpoint: the whole model (default) or its trunk (+ FPN for a detector)")
    parser.add_argument("--input-size", nargs=2, type=int, metavar=("H", "W"),
                        help="size of the export example and first random check (default 224 224; detectors: min_size)")
    parser.add_argument("--image", metavar="FILE", help="also check on this image (normalised as the model expects)")
    parser.add_argument("--image-size", type=int, metavar="N",
                        help="--image: resize the shorter side to N first (default: segmenters' eval size, "
                             "else the image as is, scaled down to 1024 px on its longer side if larger)")
    parser.add_argument("--exporter", choices=("torchscript", "dynamo"), default="torchscript",
                        help="torch.onnx exporter: TorchScript-based (default) or torch.export-based (needs onnxscript)")
    parser.add_argument("--opset", type=int, help="ONNX opset (default 17 for the TorchScript exporter)")
    parser.add_argument("--no-check", action="store_true", help="export only; skip the ONNX Runtime check")
    add_debug(parser)
    return parser


def _validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.checkpoint:
        given = [flag for flag, value in (("--out-features", args.out_features), ("--fpn", args.fpn),
                                          ("--weights", args.weights)) if value]
        if given:
            parser.error(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to --backbone, not --checkpoint")
    elif args.part != "model":
        parser.error("--part applies to --checkpoint")
    if args.input_size and min(args.input_size) < 1:
        parser.error("--input-size takes two positive integers")
    if args.image_size is not None and args.image_size < 1:
        parser.error("--image-size takes a positive integer")


def run(args: argparse.Namespace) -> int:
    """Build, export and check per parsed arguments (errors: see ``backbones_tools.deploy.onnx_export``)."""
    from backbones_tools.deploy import onnx_export as ox

    ox.require("onnx", *(() if args.no_check else ("onnxruntime",)))
    if args.exporter == "dynamo":
        ox.require("onnxscript", hint="pip install onnxscript (the torch.export-based exporter needs it)")
    if args.image and not Path(args.image).is_file():
        raise FileNotFoundError(f"image file not found: {args.image}")
    import torch

    torch.manual_seed(0)  # random weights are reproducible
    size = tuple(args.input_size) if args.input_size else None
    if args.checkpoint:
        target = ox.checkpoint_target(args.checkpoint, part=args.part, size=size)
    else:
        target = ox.trunk_target(args.backbone, out_features=args.out_features, fpn=args.fpn, weights=args.weights,
                                 fpn_channels=args.fpn_channels, size=size or (224, 224))
    print(f"model: {target.description}")
    for note in target.notes:
        print(f"  note: {note}")
    start = time.perf_counter()
    path = ox.export_onnx(target, args.out, exporter=args.exporter, opset=args.opset)
    axes = "batch, height, width" if target.batched else "none" if target.static_size else "height, width"
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, {args.exporter} exporter, "
          f"{time.perf_counter() - start:.1f} s): input {target.input_name!r} "
          f"({'fixed size' if axes == 'none' else 'dynamic ' + axes}), "
          f"outputs {', '.join(target.output_names)}")
    if args.no_check:
        return 0

    inputs = ox.standard_checks(target)
    if args.image:
        from backbones_tools.data import load_rgb

        x, note = target.image_input(load_rgb(args.image), args.image_size)
        inputs.append((f"image {args.image} ({note})", x))
    session = ox.onnx_session(path)
    failed = False
    print(f"ONNX Runtime (CPUExecutionProvider) vs PyTorch, tolerance max|diff| <= {ox.RTOL:g} x max|output| + {ox.ATOL:g}:")
    for label, x in inputs:
        print(f"  {label} input {ox.describe_input(x)}:")
        for check in ox.check_onnx(target, path, x, session=session):
            print(f"    {check}")
            failed |= not check.ok
    if failed:
        print(f"error: ONNX Runtime's outputs differ from PyTorch's beyond the tolerance; {path} is not a "
              "faithful export", file=sys.stderr)
        return 1
    print("ok: every output matches PyTorch within the tolerance")
    return 0


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    from backbones_tools.errors import debug_requested, run_cli

    parser = build_parser()
    args = parser.parse_args(argv)
    _validate(parser, args)

    return run_cli(lambda: run(args), debug=args.debug or debug_requested([]))


if __name__ == "__main__":
    sys.exit(main())
