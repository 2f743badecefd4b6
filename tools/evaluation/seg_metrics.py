"""Semantic segmentation metrics from an int64 confusion matrix (DDP-reducible).

Conventions: rows are ground truth, columns prediction; pixels whose target equals
``ignore_index`` are not counted. For class ``c``: ``IoU_c = TP / (TP + FP + FN)``. A class absent
from both the ground truth and the predictions (``TP + FP + FN = 0``) has IoU NaN and is excluded
from mIoU; a class present only in the predictions has IoU 0 and counts. Pixel accuracy is
``sum(TP) / sum(all)``; mean accuracy averages ``TP / GT`` over classes present in the ground truth;
fwIoU weights each IoU by the class's share of ground-truth pixels.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from backbones_tools.distributed import all_reduce_sum


def metrics_from_confusion(confusion: torch.Tensor) -> dict[str, Any]:
    """Per-class IoU, mIoU, pixel accuracy, mean accuracy and fwIoU of a ``[C, C]`` matrix."""
    cm = confusion.to(torch.float64)
    tp = cm.diag()
    gt = cm.sum(dim=1)
    pred = cm.sum(dim=0)
    union = gt + pred - tp
    total = cm.sum()
    nan = torch.tensor(math.nan, dtype=torch.float64)
    iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
    acc = torch.where(gt > 0, tp / gt.clamp(min=1), nan)
    present = ~torch.isnan(iou)
    freq = gt / total if total > 0 else torch.zeros_like(gt)
    weighted = freq > 0
    return {
        "per_class_iou": iou.tolist(),
        "mIoU": float(iou[present].mean()) if present.any() else math.nan,
        "pixel_accuracy": float(tp.sum() / total) if total > 0 else math.nan,
        "mean_accuracy": float(acc[~torch.isnan(acc)].mean()) if (gt > 0).any() else math.nan,
        "fwIoU": float((freq[weighted] * iou[weighted]).sum()) if weighted.any() else math.nan,
    }


class SegmentationMetrics:
    """Accumulates an int64 confusion matrix over batches of ``(prediction, target)`` label maps."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion = torch.zeros((num_classes, num_classes), dtype=torch.int64)

    def reset(self) -> None:
        """Zero the matrix."""
        self.confusion.zero_()

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Add label maps of equal shape; logits ``[N, C, H, W]`` are argmax-ed first.

        A target label outside ``0..C-1`` (other than ``ignore_index``) is an error.
        """
        if prediction.ndim == target.ndim + 1:
            prediction = prediction.argmax(dim=1)
        if prediction.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(prediction.shape)} != target shape "
                             f"{tuple(target.shape)}")
        t = target.reshape(-1).to(torch.int64).cpu()
        p = prediction.reshape(-1).to(torch.int64).cpu()
        keep = t != self.ignore_index
        t, p = t[keep], p[keep]
        if t.numel() and (t.min() < 0 or t.max() >= self.num_classes):
            raise ValueError(f"target labels must be in 0..{self.num_classes - 1} or "
                             f"{self.ignore_index}, found {sorted(set(t.unique().tolist()))[:10]}")
        if p.numel() and (p.min() < 0 or p.max() >= self.num_classes):
            raise ValueError(f"predicted labels must be in 0..{self.num_classes - 1}")
        n = self.num_classes
        self.confusion += torch.bincount(t * n + p, minlength=n * n).reshape(n, n)

    def all_reduce(self) -> None:
        """Sum the matrix over DDP ranks (no-op in one process)."""
        all_reduce_sum(self.confusion)

    def compute(self) -> dict[str, Any]:
        """Metrics of the current matrix (see the module docstring)."""
        return metrics_from_confusion(self.confusion)
