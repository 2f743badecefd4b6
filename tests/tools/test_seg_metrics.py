"""Segmentation metrics on a hand-computed confusion matrix."""

from __future__ import annotations

import math

import pytest
import torch
from backbones_tools.evaluation import SegmentationMetrics, metrics_from_confusion


def test_hand_computed_confusion_matrix():
    # rows = ground truth, cols = prediction; class 3 absent from both, class 2 only predicted
    cm = torch.tensor([[5, 1, 0, 0],
                       [2, 3, 1, 0],
                       [0, 0, 0, 0],
                       [0, 0, 0, 0]], dtype=torch.int64)
    m = metrics_from_confusion(cm)
    iou0 = 5 / (6 + 7 - 5)   # tp 5, gt 6, pred 7
    iou1 = 3 / (6 + 4 - 3)   # tp 3, gt 6, pred 4
    iou2 = 0 / (0 + 1 - 0)   # predicted once, never in GT -> 0, counted
    assert m["per_class_iou"][:3] == pytest.approx([iou0, iou1, iou2])
    assert math.isnan(m["per_class_iou"][3])  # absent from GT and prediction -> excluded
    assert m["mIoU"] == pytest.approx((iou0 + iou1 + iou2) / 3)
    assert m["pixel_accuracy"] == pytest.approx(8 / 12)
    assert m["mean_accuracy"] == pytest.approx((5 / 6 + 3 / 6) / 2)
    assert m["fwIoU"] == pytest.approx(0.5 * iou0 + 0.5 * iou1)


def test_update_ignores_255_and_accepts_logits():
    metric = SegmentationMetrics(num_classes=3)
    target = torch.tensor([[[0, 1, 2, 255]]])
    logits = torch.zeros(1, 3, 1, 4)
    logits[0, 0, 0, 0] = logits[0, 1, 0, 1] = logits[0, 1, 0, 2] = logits[0, 2, 0, 3] = 1.0
    metric.update(logits, target)
    assert metric.confusion.dtype == torch.int64
    assert metric.confusion.tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 0]]
    metric.all_reduce()  # no-op outside DDP
    assert metric.compute()["pixel_accuracy"] == pytest.approx(2 / 3)


def test_bad_labels_are_errors():
    metric = SegmentationMetrics(num_classes=2)
    with pytest.raises(ValueError, match="target labels"):
        metric.update(torch.tensor([0, 1]), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="shape"):
        metric.update(torch.zeros(2, 2, dtype=torch.int64), torch.zeros(3, dtype=torch.int64))
