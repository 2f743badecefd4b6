"""Backend timing on the 500-image / 22,000-detection set (slow; prints the numbers).

Run: OMP_NUM_THREADS=1 pytest -m slow -s tests/tools/test_eval_timing.py
"""

from __future__ import annotations

import contextlib
import copy
import io
import time

import pytest
from backbones_tools.data import coco_from_dict
from backbones_tools.evaluation import get_backend


def _time_backend(gt: dict, results: list, iou_type: str, backend: str) -> tuple[float, float, list[float]]:
    """(seconds for evaluate + accumulate, seconds for loadRes + evaluate + accumulate + summarize,
    the 12 stats)."""
    be = get_backend(backend)
    with contextlib.redirect_stdout(io.StringIO()):
        start = time.perf_counter()
        coco_gt = coco_from_dict(copy.deepcopy(gt), be.coco_cls)
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        ev = be.make_eval(coco_gt, coco_dt, iou_type)
        mid = time.perf_counter()
        ev.evaluate()
        ev.accumulate()
        end = time.perf_counter()
        ev.summarize()
        total = time.perf_counter() - start
    return end - mid, total, [float(v) for v in ev.stats]


@pytest.mark.slow
@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_backend_timing(synthetic_eval, iou_type):
    pytest.importorskip("faster_coco_eval")
    t = {b: _time_backend(synthetic_eval["gt"], synthetic_eval[iou_type], iou_type, b)
         for b in ("pycocotools", "faster_coco_eval")}
    (pe, pt, p_stats), (fe, ft, f_stats) = t["pycocotools"], t["faster_coco_eval"]
    print(f"\n[{iou_type}] {len(synthetic_eval[iou_type])} detections, 500 images: "
          f"evaluate+accumulate pycocotools {pe:.2f}s, faster_coco_eval {fe:.2f}s, ratio {pe / fe:.1f}x; "
          f"with loading and summary {pt:.2f}s vs {ft:.2f}s, ratio {pt / ft:.1f}x")
    assert p_stats == pytest.approx(f_stats, abs=1e-12)  # the same numbers ...
    if iou_type == "bbox":  # ... faster on boxes (9.6x measured; 2x is the floor on a shared machine).
        # On masks the gain is not reliable (3.5x in one run, 0.8x in another), so none is asserted.
        assert pe / fe > 2.0, "faster_coco_eval lost its bbox speed-up"
