"""Backend timing on the 500-image / 22,000-detection set (slow; prints the numbers).

Run: OMP_NUM_THREADS=1 pytest -m slow -s tests/tools/test_eval_timing.py
"""

from __future__ import annotations

import time

import pytest

from tools.evaluation import run_cocoeval


@pytest.mark.slow
@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_backend_timing(synthetic_eval, iou_type):
    pytest.importorskip("faster_coco_eval")
    times = {}
    for backend in ("pycocotools", "faster_coco_eval"):
        best = float("inf")
        for _ in range(2):
            start = time.perf_counter()
            run_cocoeval(synthetic_eval["gt"], synthetic_eval[iou_type], iou_type, backend)
            best = min(best, time.perf_counter() - start)
        times[backend] = best
    ratio = times["pycocotools"] / times["faster_coco_eval"]
    print(f"\n[{iou_type}] {len(synthetic_eval[iou_type])} detections, 500 images: "
          f"pycocotools {times['pycocotools']:.2f}s, faster_coco_eval {times['faster_coco_eval']:.2f}s, "
          f"ratio {ratio:.1f}x (load + evaluate + accumulate + summarize, best of 2)")
    assert times["faster_coco_eval"] > 0
