"""Checks of training targets before a torchvision detector sees them.

torchvision reports bad targets with ``AssertionError``s (or index errors deep in the loss); this
check runs as a forward pre-hook of the detector in training mode and raises ``ValueError`` /
``TypeError`` naming the image, the box and what is wrong with it.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn


class TargetCheck:
    """Forward pre-hook validating ``targets`` of a detector's training forward.

    Args:
        num_classes: the detector's class count.
        background: True for the R-CNNs, where label 0 is the background and objects are labelled
            ``1..num_classes-1``; False for RetinaNet/FCOS (labels ``0..num_classes-1``).
        masks: require ``masks`` (N, H, W) per target (Mask R-CNN).
        keypoints: require ``keypoints`` (N, K, 3) per target (Keypoint R-CNN).
    """

    def __init__(self, num_classes: int, *, background: bool, masks: bool = False, keypoints: bool = False) -> None:
        self.num_classes = num_classes
        self.background = background
        self.masks = masks
        self.keypoints = keypoints

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if not module.training:
            return None
        images = args[0] if args else kwargs.get("images")
        targets = args[1] if len(args) > 1 else kwargs.get("targets")
        if targets is None:
            raise ValueError("targets are required in training mode: one dict with 'boxes' and 'labels' per image")
        if not isinstance(targets, Sequence) or isinstance(targets, (str, bytes)):
            raise TypeError(f"targets must be a list of dicts, one per image; got {type(targets).__name__}")
        if images is not None and len(targets) != len(images):
            raise ValueError(f"got {len(images)} images but {len(targets)} targets: give one target dict per image")
        for index, target in enumerate(targets):
            self.check(index, target)
        return None

    def check(self, index: int, target: Any) -> None:
        """Raise if the target of image ``index`` is malformed."""
        where = f"target {index}"
        if not isinstance(target, Mapping):
            raise TypeError(f"{where} must be a dict with 'boxes' and 'labels'; got {type(target).__name__}")
        required = ["boxes", "labels"] + ["masks"] * self.masks + ["keypoints"] * self.keypoints
        for key in required:
            if key not in target:
                raise ValueError(f"{where} has no {key!r} (keys: {', '.join(map(str, target)) or 'none'})")
            if not isinstance(target[key], torch.Tensor):
                raise TypeError(f"{where}[{key!r}] must be a tensor; got {type(target[key]).__name__}")
        boxes, labels = target["boxes"], target["labels"]
        if boxes.dim() != 2 or boxes.shape[-1] != 4 or not boxes.is_floating_point():
            raise ValueError(
                f"{where}['boxes'] must be a float tensor of shape (N, 4) in (x1, y1, x2, y2) pixels; "
                f"got {boxes.dtype} of shape {tuple(boxes.shape)}"
            )
        n = boxes.shape[0]
        if not torch.isfinite(boxes).all():
            raise ValueError(f"{where}['boxes'] holds NaN or infinite coordinates")
        degenerate = (boxes[:, 2:] <= boxes[:, :2]).any(dim=1)
        if degenerate.any():
            i = int(torch.nonzero(degenerate)[0])
            raise ValueError(
                f"{where}: box {i} {boxes[i].tolist()} has x2 <= x1 or y2 <= y1; boxes must be "
                "(x1, y1, x2, y2) with positive width and height"
            )
        if labels.shape != (n,) or labels.dtype != torch.int64:
            raise ValueError(
                f"{where}['labels'] must be an int64 tensor of shape ({n},), one per box; "
                f"got {labels.dtype} of shape {tuple(labels.shape)}"
            )
        low = 1 if self.background else 0
        if n and (labels.min() < low or labels.max() >= self.num_classes):
            bad = labels[(labels < low) | (labels >= self.num_classes)][0].item()
            rule = (
                f"1..{self.num_classes - 1} (0 is the background, num_classes={self.num_classes} counts it)"
                if self.background
                else f"0..{self.num_classes - 1} (num_classes={self.num_classes}, no background class)"
            )
            raise ValueError(f"{where}: label {bad} is out of range; labels must be in {rule}")
        if self.masks:
            masks = target["masks"]
            if masks.dim() != 3 or masks.shape[0] != n:
                raise ValueError(f"{where}['masks'] must have shape ({n}, H, W), one mask per box; got {tuple(masks.shape)}")
        if self.keypoints:
            keypoints = target["keypoints"]
            if keypoints.dim() != 3 or keypoints.shape[0] != n or keypoints.shape[-1] != 3:
                raise ValueError(
                    f"{where}['keypoints'] must have shape ({n}, K, 3) as (x, y, visibility); got {tuple(keypoints.shape)}"
                )
