"""Convert a backbone checkpoint (torchvision, timm, Res2Net, detectron2, caffe2, MMDetection,
torchvision detector, or a run checkpoint of this package) to a plain trunk state dict.

    python tools/convert_weights.py SRC DST [--format auto|torchvision|...] [--arch NAME]
"""

from __future__ import annotations

import argparse
import sys

if __package__ in (None, ""):  # run as a file (python tools/x.py): tools/ itself must not shadow
    sys.path.pop(0)            # top-level modules; the package is imported as backbones_tools

from backbones_tools.cli_args import add_debug  # noqa: E402

FORMATS = ("auto", "torchvision", "timm", "res2net", "detectron2", "caffe2", "mmdet", "torchvision_detector")

EPILOG = """\
examples:
  # detectron2 / MMDetection / torchvision-detector checkpoint -> trunk weights, checked against a variant
  python tools/convert_weights.py model_final_f10217.pkl r50.pth --arch resnet50
  python tools/convert_weights.py mmdet_r50_fpn_1x.pth r50.safetensors --arch resnet50
  # the trunk of a trained run of this package (detector: backbone.body.*, segmenter: backbone.*)
  python tools/convert_weights.py runs/det/demo_shapes_faster_rcnn_r18/best.pth r18.pth --arch resnet18 \\
      --option norm=FrozenBN
  # no --arch: rename only, and print the format found and the variants the keys match
  python tools/convert_weights.py R-50.pkl r50.pth

DST's suffix picks the file type: .pth/.pt/.bin (torch.save of a plain dict of tensors) or
.safetensors. With --arch the checkpoint is loaded strictly into create_backbone(NAME, **options)
and the load report is printed; keys that do not fit end the run with exit status 1 and the
report. Exit status 2: unreadable or missing SRC, unknown NAME, bad option or suffix. Use the result
anywhere backbones.load_weights or create_backbone(weights=...) takes a file (model.backbone.weights
in a training config).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tools/convert_weights.py", description=" ".join(__doc__.split("\n\n")[0].split()),
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("src", metavar="SRC", help="checkpoint file (.pth/.pt/.bin/.pkl/.safetensors) or http(s) URL")
    parser.add_argument("dst", metavar="DST", help="output file: .pth, .pt, .bin or .safetensors")
    parser.add_argument("--format", choices=FORMATS, default="auto", help="naming scheme of SRC (default: guessed from its keys)")
    parser.add_argument("--arch", metavar="NAME", help="variant to load the weights into strictly (backbones.list_backbones())")
    parser.add_argument("--option", dest="options", action="append", default=[], metavar="KEY=VALUE",
                        help="--arch: create_backbone option, e.g. norm=FrozenBN, style=caffe, norm=GN (repeatable)")
    add_debug(parser)
    return parser


def parse_options(items: list[str]) -> dict:
    """``KEY=VALUE`` strings to create_backbone options (values parsed as YAML: 1, true, [2, 3])."""
    import yaml
    from backbones_tools.deploy.convert import ConversionError

    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConversionError(f"--option takes KEY=VALUE; got {item!r}")
        try:
            options[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError as exc:
            raise ConversionError(f"--option {item!r}: unreadable value ({exc})") from None
    return options


def run(args: argparse.Namespace) -> int:
    from backbones_tools.deploy.convert import convert_weights, save_state_dict

    from backbones.weights import WeightsMismatchError

    options = parse_options(args.options)
    try:
        conversion = convert_weights(args.src, format=args.format, arch=args.arch, options=options)
    except WeightsMismatchError as exc:
        print(exc.report)
        print(f"error: {args.src} does not fit create_backbone({args.arch!r}"
              f"{''.join(f', {k}={v!r}' for k, v in options.items())}): "
              f"{_problems(exc.report)}; nothing written", file=sys.stderr)
        return 1
    if conversion.report is not None:
        print(f"{conversion.source}: {conversion.label}")
        print(conversion.report)
        print(f"  loads strictly into create_backbone({args.arch!r}"
              f"{''.join(f', {k}={v!r}' for k, v in options.items())}): {len(conversion.state)} tensors")
    else:
        print(conversion.summary())
    metadata = {"source": str(args.src), "source_format": conversion.format, "layout": "torchvision"}
    if args.arch:
        metadata["arch"] = args.arch
    path = save_state_dict(conversion.state, args.dst, metadata=metadata)
    print(f"wrote {path} ({len(conversion.state)} tensors, {path.stat().st_size / 2**20:.1f} MiB)")
    return 0


def _problems(report) -> str:
    parts = []
    for what, items in (("missing", report.missing), ("unexpected", report.unexpected),
                        ("of the wrong shape", [m[0] for m in report.mismatched])):
        if items:
            parts.append(f"{len(items)} key{'s' if len(items) > 1 else ''} {what} (e.g. {items[0]})")
    return "; ".join(parts) or "keys do not match"


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    from backbones_tools.errors import debug_requested, run_cli

    parser = build_parser()
    args = parser.parse_args(argv)


    return run_cli(lambda: run(args), debug=args.debug or debug_requested([]))


if __name__ == "__main__":
    sys.exit(main())
