"""CocoEvaluator gives COCOeval's 12 stats on a 500-image, 22,000-detection set."""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import pytest
import torch
from backbones_tools.data import CategoryMap
from backbones_tools.evaluation import CocoEvaluator
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

_REFERENCE: dict[str, list[float]] = {}


def reference_stats(gt_path, results, iou_type: str) -> list[float]:
    """pycocotools run directly, exactly as its README shows."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        dt = gt.loadRes(copy.deepcopy(results))
        ev = COCOeval(gt, dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(v) for v in ev.stats]


def _reference(synthetic_eval, iou_type):
    if iou_type not in _REFERENCE:
        _REFERENCE[iou_type] = reference_stats(
            synthetic_eval["gt_path"], synthetic_eval[iou_type], iou_type)
    return _REFERENCE[iou_type]


def test_synthetic_set_size(synthetic_eval):
    gt = synthetic_eval["gt"]
    with_gt = {a["image_id"] for a in gt["annotations"]}
    assert len(gt["images"]) >= 500
    assert len(synthetic_eval["bbox"]) >= 20000
    assert len(gt["categories"]) >= 4
    assert len(with_gt) < len(gt["images"])  # some images have no ground truth


_EVALUATED: dict = {}


def _evaluated(synthetic_eval, iou_type):
    if iou_type not in _EVALUATED:
        ev = CocoEvaluator(synthetic_eval["gt_path"], [iou_type])
        ev.add_results(synthetic_eval[iou_type], iou_type)
        _EVALUATED[iou_type] = ev.evaluate()[iou_type]
    return _EVALUATED[iou_type]


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_pycocotools_backend_is_bit_identical(synthetic_eval, iou_type):
    ref = _reference(synthetic_eval, iou_type)
    stats = _evaluated(synthetic_eval, iou_type).stats
    assert stats == ref  # exact float equality, all 12 numbers
    assert 0.0 < stats[0] < 1.0


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_faster_backend_matches(synthetic_eval, iou_type):
    pytest.importorskip("faster_coco_eval")
    ref = _reference(synthetic_eval, iou_type)
    ev = CocoEvaluator(synthetic_eval["gt_path"], [iou_type], backend="faster_coco_eval")
    ev.add_results(synthetic_eval[iou_type], iou_type)
    stats = ev.evaluate()[iou_type].stats
    # faster-coco-eval 1.8 computes precision as tp / (tp + fp) where pycocotools adds
    # np.spacing(1) to the denominator; the two differ by 1 ulp (1.0 vs 0.9999999999999998) when a
    # single top-scored detection is a true positive, which moves a mean by ~1e-17 at most.
    np.testing.assert_allclose(stats, ref, rtol=0, atol=1e-15)


def test_per_category_table_matches_precision_array(synthetic_eval):
    res = _evaluated(synthetic_eval, "bbox")
    precision = res.coco_eval.eval["precision"]
    assert [r["category_id"] for r in res.per_category] == sorted(
        c["id"] for c in synthetic_eval["gt"]["categories"])
    # the mean of the per-class AP over classes equals stats[0] (all classes have GT here)
    assert np.isclose(np.mean([r["AP"] for r in res.per_category]), res.stats[0])
    p = precision[0, :, 2, 0, -1]
    assert res.per_category[2]["AP50"] == float(np.mean(p[p > -1]))


def test_torchvision_outputs_are_converted(synthetic_eval):
    """Detector outputs (xyxy, labels 1..K, masks [N,1,H,W] probabilities) give the same stats as
    pycocotools run on the evaluator's own results list."""
    gt = synthetic_eval["gt"]
    images = {img["id"]: img for img in gt["images"][:40]}
    cmap = CategoryMap.from_coco_categories(gt["categories"])
    gen = torch.Generator().manual_seed(0)
    ev = CocoEvaluator(gt, ["bbox", "segm"], only_seen_images=True)
    for img_id, info in images.items():
        h, w = info["height"], info["width"]
        n = int(torch.randint(0, 6, (1,), generator=gen))
        xy = torch.rand(n, 2, generator=gen) * torch.tensor([w / 2, h / 2])
        wh = torch.rand(n, 2, generator=gen) * torch.tensor([w / 2, h / 2]) + 1
        masks = torch.zeros(n, 1, h, w)
        for i in range(n):
            x0, y0 = int(xy[i, 0]), int(xy[i, 1])
            masks[i, 0, y0: y0 + int(wh[i, 1]), x0: x0 + int(wh[i, 0])] = 0.9
        ev.update({img_id: {"boxes": torch.cat([xy, xy + wh], 1), "scores": torch.rand(n, generator=gen),
                            "labels": torch.randint(1, cmap.num_classes + 1, (n,), generator=gen),
                            "masks": masks}})
    out = ev.evaluate()
    sub = {"images": list(images.values()), "categories": gt["categories"],
           "annotations": [a for a in gt["annotations"] if a["image_id"] in images]}
    for iou_type in ("bbox", "segm"):
        results = ev.results(iou_type)
        assert all(r["category_id"] in cmap for r in results)
        with contextlib.redirect_stdout(io.StringIO()):
            g = COCO()
            g.dataset = copy.deepcopy(sub)
            g.createIndex()
            e = COCOeval(g, g.loadRes(copy.deepcopy(results)), iou_type)
            e.evaluate()
            e.accumulate()
            e.summarize()
        assert out[iou_type].stats == [float(v) for v in e.stats]


def test_ddp_gather_drops_duplicate_images(synthetic_eval, monkeypatch):
    """Two ranks' predictions are merged; an image padded onto both ranks counts once."""
    import backbones_tools.evaluation.coco_evaluator as mod

    gt = synthetic_eval["gt"]
    cmap = CategoryMap.from_coco_categories(gt["categories"])
    pred = {"boxes": torch.tensor([[1.0, 1.0, 20.0, 20.0]]), "scores": torch.tensor([0.9]),
            "labels": torch.tensor([1])}
    rank0, rank1 = CocoEvaluator(gt), CocoEvaluator(gt)
    rank0.update({1: pred, 2: pred})
    rank1.update({3: pred, 1: {**pred, "labels": torch.tensor([2])}})  # duplicate of image 1
    monkeypatch.setattr(mod, "all_gather_object", lambda obj: [rank0._per_image, rank1._per_image])
    merged = rank0._gathered()
    assert sorted(merged) == [1, 2, 3]
    assert merged[1]["bbox"][0]["category_id"] == cmap.category_id(1)  # rank 0's copy kept
    assert rank0.num_duplicates == 1
