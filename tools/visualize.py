"""Draw ground truth (green) and optionally predictions from a COCO results JSON (red) to PNGs.

    python tools/visualize.py --gt instances_val2017.json --images val2017 --out vis/ \
        [--results results.json] [--num 16 | --ids 1 2 3] [--score-threshold 0.5] [--no-masks]
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

if __package__ in (None, ""):  # run as a file (python tools/x.py): tools/ itself must not shadow
    sys.path.pop(0)            # top-level modules; the package is imported as backbones_tools

from backbones_tools.data import (  # noqa: E402
    CategoryMap,
    CocoFormatError,
    coco_to_drawable,
    draw_gt_and_predictions,
    load_coco_gt,
    load_rgb,
    read_json,
    save_png,
)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gt", required=True, help="COCO annotation JSON")
    parser.add_argument("--images", required=True, help="folder holding the images")
    parser.add_argument("--out", required=True, help="output folder for PNGs")
    parser.add_argument("--results", help="COCO results JSON to overlay")
    parser.add_argument("--ids", type=int, nargs="*", help="image ids to draw")
    parser.add_argument("--num", type=int, default=16, help="number of images (first ids)")
    parser.add_argument("--score-threshold", type=float, default=0.5)
    parser.add_argument("--no-masks", action="store_true")
    args = parser.parse_args(argv)
    try:
        coco = load_coco_gt(args.gt)
        cmap = CategoryMap.from_coco_categories(coco.dataset["categories"])
        preds = defaultdict(list)
        if args.results:
            for r in read_json(args.results):
                preds[r["image_id"]].append(r)
        ids = args.ids or sorted(coco.imgs)[: args.num]
        for img_id in ids:
            if img_id not in coco.imgs:
                raise CocoFormatError(f"image id {img_id} is not in {args.gt}")
            info = coco.imgs[img_id]
            image = load_rgb(Path(args.images) / info["file_name"])
            h, w = image.shape[:2]
            gt = [a for a in coco.imgToAnns.get(img_id, []) if not a.get("iscrowd", 0)]
            target = coco_to_drawable(gt, cmap, h, w, with_masks=not args.no_masks)
            pred = coco_to_drawable(preds[img_id], cmap, h, w, with_masks=not args.no_masks) \
                if args.results else None
            drawn = draw_gt_and_predictions(image, cmap, target, pred, args.score_threshold)
            path = save_png(drawn, Path(args.out) / f"{img_id:012d}.png")
            print(path)
    except (FileNotFoundError, CocoFormatError, OSError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
