"""Analyse training runs and predictions: training curves, detection and segmentation confusion
matrices, per-class precision-recall curves (PNGs drawn with matplotlib's Agg backend).

    python tools/analyze.py curves RUN [RUN ...] --out curves.png
    python tools/analyze.py confusion --gt ann.json --results predictions.json --out confusion.png \
        [--iou 0.5] [--score-thresh 0.3] [--pr-out pr.png] [--json confusion.json]
    python tools/analyze.py seg-confusion RUN --out seg_confusion.png [--checkpoint best.pth] \
        [--split val2017] [--data-root DIR] [--json confusion.json]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file (python tools/x.py): tools/ itself must not shadow
    sys.path.pop(0)            # top-level modules; the package is imported as backbones_tools

from backbones_tools.cli_args import add_debug  # noqa: E402
from backbones_tools.errors import debug_requested, run_cli  # noqa: E402
from backbones_tools.files import atomic_write_json  # noqa: E402

EPILOG = """examples:
  # loss terms, lr and AP/mIoU of two runs overlaid
  python tools/analyze.py curves runs/det/demo_shapes_faster_rcnn_r18 runs/det/other --out curves.png
  # detection confusion matrix (+ confusion_pr.png: per-class precision-recall curves)
  python tools/analyze.py confusion --gt data/shapes/annotations/instances_val2017.json \\
      --results predictions.json --out confusion.png
  # pixel confusion matrix of a segmentation run (evaluates its best.pth on its val split)
  python tools/analyze.py seg-confusion runs/seg/demo_shapes_deeplabv3plus_r18 --out seg_confusion.png
"""


def _fraction(low_open: bool):
    def parse(text: str) -> float:
        value = float(text)
        if not ((0.0 < value) if low_open else (0.0 <= value)) or value > 1.0:
            raise argparse.ArgumentTypeError(f"must be in {'(0' if low_open else '[0'}, 1], got {text}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    add_debug(common)
    parser = argparse.ArgumentParser(
        prog="analyze.py", description="Analyse training runs and predictions: training curves, detection and "
        "segmentation confusion matrices, per-class precision-recall curves (PNG).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, description: str, example: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=summary, description=description,
                              epilog=f"example:\n  python tools/analyze.py {name} {example}",
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    p = command("curves", "loss terms, lr and AP/mIoU of run folders (metrics.jsonl)",
                "Plot every loss term, the learning rate and the headline metric (bbox/AP, segm/AP, seg/mIoU) "
                "against the iteration, and the headline metric against wall-clock time, from each run folder's "
                "metrics.jsonl; runs overlaid, one colour each.", "runs/det/a runs/det/b --out curves.png")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folder (holding metrics.jsonl)")
    p.add_argument("--out", required=True, type=Path, help="PNG to write")
    p.add_argument("--title", help="figure title (default: the run names)")

    p = command("confusion", "detection confusion matrix and per-class PR curves",
                "Detection confusion matrix with a background row and column, as MMDetection's "
                "confusion_matrix.py defines it (rows: ground-truth class, columns: detected class; background "
                "row = false positives, background column = missed objects; rows normalised), and per-class "
                "precision-recall curves from COCOeval at IoU 0.5 and 0.75.",
                "--gt instances_val2017.json --results predictions.json --out confusion.png")
    p.add_argument("--gt", required=True, type=Path, help="COCO ground-truth JSON")
    p.add_argument("--results", required=True, type=Path, help="COCO bbox results JSON (a list)")
    p.add_argument("--out", required=True, type=Path, help="confusion-matrix PNG to write")
    p.add_argument("--pr-out", type=Path, help="precision-recall PNG (default: <out>_pr.png)")
    p.add_argument("--iou", type=_fraction(True), default=0.5, help="IoU that matches a detection (default 0.5)")
    p.add_argument("--score-thresh", type=_fraction(False), default=0.3,
                   help="detections below this score are left out (default 0.3)")
    p.add_argument("--json", type=Path, help="also write the matrix (names, counts, normalised) as JSON")

    p = command("seg-confusion", "pixel confusion matrix of a segmentation run",
                "Evaluate a segmentation run's checkpoint on its val split and plot the pixel confusion matrix "
                "(rows: ground truth, columns: prediction, background included, ignored pixels not counted; "
                "rows normalised).", "runs/seg/demo --out seg_confusion.png")
    p.add_argument("run", metavar="RUN", help="segmentation run folder (or a checkpoint file)")
    p.add_argument("--checkpoint", default="best.pth", help="checkpoint in the run folder (default best.pth)")
    p.add_argument("--split", help="split to evaluate (default: the run's data.val_split)")
    p.add_argument("--data-root", help="COCO-layout dataset folder (default: the run's data.root)")
    p.add_argument("--out", required=True, type=Path, help="PNG to write")
    p.add_argument("--json", type=Path, help="also write the matrix (names, counts, normalised) as JSON")
    return parser


def _write_json(path: Path, data: dict) -> None:
    print(f"wrote {atomic_write_json(path, data, indent=1)}")


def run(args: argparse.Namespace) -> int:
    """Carry out a parsed command."""
    if args.command == "curves":
        from backbones_tools.analysis.curves import curves

        print(f"wrote {curves(args.runs, args.out, args.title)}")
    elif args.command == "confusion":
        from backbones_tools.analysis import confusion as C

        gt, results = C.load_detection_inputs(args.gt, args.results)
        matrix = C.detection_confusion(gt, results, args.iou, args.score_thresh)
        print(f"wrote {C.detection_confusion_figure(matrix, args.out, args.iou, args.score_thresh)}")
        pr_out = args.pr_out or args.out.with_name(f"{args.out.stem}_pr.png")
        print(f"wrote {C.plot_pr_curves(C.pr_curves(gt, results), pr_out)}")
        if args.json:
            _write_json(args.json, {"iou": args.iou, "score_thresh": args.score_thresh, **matrix.to_dict()})
    else:
        from backbones_tools.analysis import confusion as C

        result = C.seg_confusion(args.run, args.checkpoint, args.split, args.data_root)
        print(f"mIoU {result.metrics['mIoU'] * 100:.2f}  pixel accuracy {result.metrics['pixel_accuracy'] * 100:.2f}")
        print(f"wrote {C.seg_confusion_figure(result, args.out)}")
        if args.json:
            _write_json(args.json, {"checkpoint": str(result.checkpoint), "split": result.split,
                                    **result.matrix.to_dict()})
    return 0


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: 0 done, 2 a user error (message, no traceback)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    return run_cli(lambda: run(args), debug=args.debug or debug_requested([]))


if __name__ == "__main__":
    sys.exit(main())
