"""Synthetic COCO ground truth + detections for evaluator exactness tests and timings."""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

CATEGORY_IDS = (1, 3, 7, 12, 20)


def _poly(x: float, y: float, w: float, h: float, triangle: bool) -> list[float]:
    if triangle:
        return [x, y + h, x + w / 2, y, x + w, y + h]
    return [x, y, x + w, y, x + w, y + h, x, y + h]


def make_gt_and_detections(
    num_images: int = 500, dets_per_image: int = 44, seed: int = 0
) -> tuple[dict, list[dict], list[dict]]:
    """Return ``(gt, bbox_results, segm_results)``.

    Ground truth: images of 48-96 px, 0-8 polygon objects each (about 10 % of images have none),
    a few crowd RLE regions. Detections: perfect copies, jittered copies, wrong-class and random
    boxes, plus detections on images without ground truth; scores random with some ties.
    """
    rng = np.random.default_rng(seed)
    images, anns = [], []
    bbox_res, segm_res = [], []
    for img_id in range(1, num_images + 1):
        h, w = int(rng.integers(48, 97)), int(rng.integers(48, 97))
        images.append({"id": img_id, "file_name": f"{img_id}.png", "height": h, "width": w})
        n = 0 if rng.uniform() < 0.1 else int(rng.integers(1, 9))
        gts = []
        for _ in range(n):
            bw, bh = rng.uniform(3, w * 0.7), rng.uniform(3, h * 0.7)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            tri = bool(rng.integers(0, 2))
            poly = _poly(x, y, bw, bh, tri)
            rle = mask_utils.frPyObjects([poly], h, w)[0]
            crowd = int(rng.uniform() < 0.03)
            seg = {"size": [h, w], "counts": rle["counts"].decode()} if crowd else [poly]
            ann = {"id": len(anns) + 1, "image_id": img_id,
                   "category_id": int(rng.choice(CATEGORY_IDS)), "bbox": [x, y, bw, bh],
                   "area": float(mask_utils.area(rle)), "iscrowd": crowd, "segmentation": seg}
            anns.append(ann)
            gts.append((ann, tri))
        for k in range(dets_per_image):
            mode = rng.uniform()
            if gts and mode < 0.6:
                ann, tri = gts[int(rng.integers(0, len(gts)))]
                x, y, bw, bh = ann["bbox"]
                cat = ann["category_id"]
                if mode < 0.15:
                    pass  # perfect
                elif mode < 0.5:
                    s = rng.uniform(0.02, 0.3)
                    x, y = x + rng.normal(0, s * bw), y + rng.normal(0, s * bh)
                    bw, bh = bw * rng.uniform(1 - s, 1 + s), bh * rng.uniform(1 - s, 1 + s)
                else:
                    cat = int(rng.choice(CATEGORY_IDS))
                    x, y = x + rng.normal(0, 2), y + rng.normal(0, 2)
            else:
                tri = bool(rng.integers(0, 2))
                bw, bh = rng.uniform(2, w * 0.6), rng.uniform(2, h * 0.6)
                x, y = rng.uniform(-2, w - bw), rng.uniform(-2, h - bh)
                cat = int(rng.choice(CATEGORY_IDS))
            score = float(np.round(rng.uniform(), 2)) if k % 7 == 0 else float(rng.uniform())
            bbox_res.append({"image_id": img_id, "category_id": cat,
                             "bbox": [float(x), float(y), float(bw), float(bh)], "score": score})
            rle = mask_utils.frPyObjects([_poly(x, y, bw, bh, tri)], h, w)[0]
            segm_res.append({"image_id": img_id, "category_id": cat, "score": score,
                             "segmentation": {"size": [h, w], "counts": rle["counts"].decode()}})
    gt = {"images": images, "annotations": anns,
          "categories": [{"id": c, "name": f"class{c}"} for c in CATEGORY_IDS]}
    return gt, bbox_res, segm_res
