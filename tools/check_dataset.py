"""Check a COCO-layout dataset before training: annotation consistency and image files.

    python tools/check_dataset.py --data-root DIR [--split train2017 --split val2017] \
        [--iou-type bbox|segm] [--full] [--json OUT] [--workers N]

Reads <DIR>/annotations/instances_<split>.json and the images in <DIR>/<split>/ (every split
with an annotation file when no --split is given) and prints a report grouped by problem.
Exit status: 0 usable (warnings allowed), 1 errors found, 2 usage error.
"""

from __future__ import annotations

import argparse
import sys

if __package__ in (None, ""):  # run as a file (python tools/x.py): tools/ itself must not shadow
    sys.path.pop(0)            # top-level modules; the package is imported as backbones_tools

from backbones_tools.data.checks import DatasetNotFoundError, check_dataset  # noqa: E402
from backbones_tools.files import atomic_write_json  # noqa: E402

EXAMPLE = """example:
  python tools/check_dataset.py --data-root data/coco --split train2017 --split val2017 \\
      --iou-type segm --json runs/coco_check.json

By default only image headers and file ends are read (fast: truncation is detected from the
JPEG/PNG end marker); --full decodes every image as training would.
"""


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="check_dataset.py", description=__doc__.splitlines()[0], epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True, metavar="DIR",
                        help="COCO-layout folder: annotations/instances_<split>.json, <split>/")
    parser.add_argument("--split", dest="splits", action="append", default=[], metavar="NAME",
                        help="split to check (repeatable; default: every annotation file found)")
    parser.add_argument("--iou-type", default="bbox", choices=["bbox", "segm"],
                        help="segm makes segmentations required and their problems errors "
                             "(default: bbox, where they are warnings)")
    parser.add_argument("--full", action="store_true",
                        help="decode every image fully instead of reading headers only (slow)")
    parser.add_argument("--json", metavar="OUT", help="also write the report as JSON here")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="threads for the image checks (default: min(8, CPUs))")
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (argparse's own exits become return values)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a bad argument (2, message already printed)
        return int(exc.code or 0)
    if args.workers is not None and args.workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return 2
    try:
        report = check_dataset(args.data_root, args.splits or None, args.iou_type, args.full,
                               workers=args.workers,
                               log=lambda msg: print(msg, file=sys.stderr, flush=True))
    except DatasetNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.format())
    if args.json:
        try:
            atomic_write_json(args.json, report.to_dict(), indent=2)
        except OSError as exc:
            print(f"error: cannot write {args.json}: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {args.json}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
