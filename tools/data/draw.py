"""Drawing ground truth and predictions (boxes, labels, scores, masks) with torchvision.utils."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from tools.data.categories import CategoryMap

GT_COLOUR = (0, 220, 0)
PRED_COLOUR = (255, 40, 40)


def to_uint8_image(image: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``[3, H, W]`` float 0..1 / uint8 tensor, or ``[H, W, 3]`` uint8 array -> uint8 ``[3, H, W]``."""
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    if image.dtype != torch.uint8:
        image = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return image.cpu()


def draw_instances(
    image: torch.Tensor,
    boxes: torch.Tensor | None = None,
    masks: torch.Tensor | None = None,
    captions: Sequence[str] | None = None,
    colour: tuple[int, int, int] = GT_COLOUR,
    width: int = 2,
    alpha: float = 0.4,
) -> torch.Tensor:
    """Draw boolean masks ``[N, H, W]`` then xyxy boxes ``[N, 4]`` with captions on a uint8 image."""
    out = to_uint8_image(image)
    if masks is not None and len(masks):
        m = masks.bool()
        if m.ndim == 4:
            m = m[:, 0]
        out = draw_segmentation_masks(out, m.cpu(), alpha=alpha, colors=[colour] * len(m))
    if boxes is not None and len(boxes):
        out = draw_bounding_boxes(out, boxes.detach().float().cpu(),
                                  labels=list(captions) if captions else None,
                                  colors=[colour] * len(boxes), width=width)
    return out


def draw_gt_and_predictions(
    image: torch.Tensor | np.ndarray,
    category_map: CategoryMap,
    target: Mapping[str, Any] | None = None,
    prediction: Mapping[str, Any] | None = None,
    score_threshold: float = 0.5,
    mask_threshold: float = 0.5,
) -> torch.Tensor:
    """Ground truth in green and predictions (score >= threshold) in red on one uint8 image.

    ``target`` / ``prediction`` are torchvision-style dicts (``boxes`` xyxy, ``labels`` 1..K,
    optional ``masks``; predictions also ``scores``).
    """
    out = to_uint8_image(image)
    if target is not None:
        labels = target.get("labels", torch.zeros(0, dtype=torch.int64)).tolist()
        out = draw_instances(out, target.get("boxes"), target.get("masks"),
                             [category_map.name(lbl) for lbl in labels], GT_COLOUR)
    if prediction is not None:
        keep = prediction["scores"] >= score_threshold
        masks = prediction.get("masks")
        if masks is not None:
            masks = masks[keep]
            masks = masks if masks.dtype in (torch.bool, torch.uint8) else masks > mask_threshold
        captions = [f"{category_map.name(int(lbl))} {float(s):.2f}"
                    for lbl, s in zip(prediction["labels"][keep], prediction["scores"][keep])]
        out = draw_instances(out, prediction["boxes"][keep], masks, captions, PRED_COLOUR)
    return out


def coco_to_drawable(
    anns: Sequence[Mapping[str, Any]], category_map: CategoryMap, height: int, width: int,
    with_masks: bool = True,
) -> dict[str, torch.Tensor]:
    """COCO annotations or results (xywh boxes and/or polygon/RLE segmentations) -> drawable dict
    with ``boxes`` xyxy, ``labels``, ``scores`` (1 for ground truth) and ``masks`` if present."""
    boxes, labels, scores, masks = [], [], [], []
    for a in anns:
        seg = a.get("segmentation")
        rle = None
        if seg is not None and seg != []:
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width)) if isinstance(
                seg, list) else (mask_utils.frPyObjects(seg, height, width)
                                 if isinstance(seg.get("counts"), list) else seg)
        box = a.get("bbox")
        if box is None and rle is not None:
            box = mask_utils.toBbox(rle).tolist()
        x, y, w, h = box
        boxes.append([x, y, x + w, y + h])
        labels.append(category_map.label(a["category_id"]))
        scores.append(float(a.get("score", 1.0)))
        if with_masks and rle is not None:
            masks.append(mask_utils.decode(rle).astype(bool))
    out = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "scores": torch.tensor(scores, dtype=torch.float32),
    }
    if with_masks and masks and len(masks) == len(boxes):
        out["masks"] = torch.from_numpy(np.stack(masks))
    return out


def save_png(image: torch.Tensor, path: str | os.PathLike[str]) -> Path:
    """Write a uint8 ``[3, H, W]`` tensor as PNG (parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8_image(image).permute(1, 2, 0).numpy()).save(path)
    return path
