"""COCO results: conversion from torchvision detector outputs, and validation against a GT."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from backbones_tools.data.categories import CategoryMap
from backbones_tools.data.errors import CocoFormatError
from pycocotools import mask as mask_utils

if TYPE_CHECKING:  # torch is imported where tensors are converted: results-only tools run without it
    import torch

IOU_TYPES = ("bbox", "segm")


def _labels_to_category_ids(labels: torch.Tensor, category_map: CategoryMap, image_id: int) -> list[int]:
    ids = []
    for label in labels.tolist():
        try:
            ids.append(category_map.category_id(int(label)))
        except KeyError:
            raise ValueError(
                f"prediction for image {image_id} has label {label}, outside the category map's "
                f"labels 1..{category_map.num_classes}"
            ) from None
    return ids


def encode_masks(masks: torch.Tensor, threshold: float = 0.5) -> list[dict[str, Any]]:
    """RLE-encode ``[N, 1, H, W]`` (or ``[N, H, W]``) mask probabilities thresholded at
    ``threshold`` (boolean/uint8 masks are taken as they are); ``counts`` are str for JSON."""
    import torch

    if masks.ndim == 4:
        masks = masks[:, 0]
    if masks.dtype == torch.bool or masks.dtype == torch.uint8:
        binary = masks.bool()
    else:
        binary = masks > threshold
    arr = np.asfortranarray(binary.permute(1, 2, 0).cpu().numpy().astype(np.uint8))
    rles = mask_utils.encode(arr) if len(binary) else []
    out = []
    for rle in rles:
        out.append({"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")})
    return out


def prediction_to_results(
    image_id: int,
    prediction: Mapping[str, torch.Tensor],
    category_map: CategoryMap,
    iou_types: Sequence[str] = ("bbox",),
    mask_threshold: float = 0.5,
) -> dict[str, list[dict[str, Any]]]:
    """Convert one torchvision detector output (``boxes`` xyxy, ``scores``, ``labels``, optional
    ``masks``) into COCO results per IoU type (``bbox`` as xywh; ``segm`` as RLE, without a
    ``bbox`` key so that pycocotools derives area and box from the mask)."""
    scores = prediction["scores"].detach().cpu().tolist()
    category_ids = _labels_to_category_ids(prediction["labels"].detach().cpu(), category_map, image_id)
    out: dict[str, list[dict[str, Any]]] = {}
    if "bbox" in iou_types:
        boxes = prediction["boxes"].detach().cpu().float()
        xywh = boxes.reshape(-1, 4).clone()
        xywh[:, 2:] -= xywh[:, :2]
        xywh = xywh.tolist()
        out["bbox"] = [
            {"image_id": int(image_id), "category_id": c, "bbox": b, "score": s}
            for c, b, s in zip(category_ids, xywh, scores)
        ]
    if "segm" in iou_types:
        if "masks" not in prediction:
            raise ValueError(f"iou type 'segm' needs 'masks' in the prediction for image {image_id}")
        rles = encode_masks(prediction["masks"].detach(), mask_threshold)
        out["segm"] = [
            {"image_id": int(image_id), "category_id": c, "segmentation": r, "score": s}
            for c, r, s in zip(category_ids, rles, scores)
        ]
    return out


@dataclass
class ResultsReport:
    """Problems found in a results list; ``dropped`` counts results left out (non-strict mode)."""

    unknown_image_ids: set[int] = field(default_factory=set)
    unknown_category_ids: set[int] = field(default_factory=set)
    malformed: list[str] = field(default_factory=list)
    dropped: int = 0

    @property
    def ok(self) -> bool:
        return not (self.unknown_image_ids or self.unknown_category_ids or self.malformed)

    def describe(self) -> str:
        parts = []
        if self.unknown_image_ids:
            ids = sorted(self.unknown_image_ids)
            parts.append(f"{len(ids)} image ids not in the ground truth: {ids[:10]}")
        if self.unknown_category_ids:
            parts.append(f"category ids not in the ground truth's categories: "
                         f"{sorted(self.unknown_category_ids)}")
        if self.malformed:
            parts.append(f"{len(self.malformed)} malformed results, e.g. {self.malformed[:3]}")
        return "; ".join(parts) or "no problems"


def _finite(values: Any, n: int) -> bool:
    return (isinstance(values, list | tuple) and len(values) == n
            and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                    for v in values))


def check_result(result: Any, iou_type: str, images: Mapping[int, Mapping[str, Any]],
                 category_ids: set[int]) -> tuple[str, Any] | None:
    """Return ``(kind, detail)`` of the first problem of one result, or None when it is valid."""
    if not isinstance(result, Mapping):
        return "malformed", f"result is a {type(result).__name__}, not an object"
    image_id = result.get("image_id")
    if not isinstance(image_id, int) or isinstance(image_id, bool):
        return "malformed", f"image_id {image_id!r} is not an integer"
    if not isinstance(result.get("category_id"), int):
        return "malformed", f"image {image_id}: category_id {result.get('category_id')!r} is not an integer"
    if image_id not in images:
        return "image", image_id
    if result.get("category_id") not in category_ids:
        return "category", result.get("category_id")
    if not _finite([result.get("score")], 1):
        return "malformed", f"image {image_id}: score {result.get('score')!r} is not a finite number"
    if iou_type == "bbox":
        box = result.get("bbox")
        if not _finite(box, 4):
            return "malformed", f"image {image_id}: bbox {box!r} is not 4 finite numbers"
        if box[2] < 0 or box[3] < 0:
            return "malformed", f"image {image_id}: bbox {box!r} has negative width/height"
    elif iou_type == "segm":
        seg = result.get("segmentation")
        if isinstance(seg, Mapping):
            info = images[image_id]
            if "counts" not in seg or list(seg.get("size", [])) != [info["height"], info["width"]]:
                return "malformed", (f"image {image_id}: RLE size {seg.get('size')!r} differs from "
                                     f"the image's [{info['height']}, {info['width']}]")
        elif not (isinstance(seg, list) and seg and all(isinstance(p, list) for p in seg)):
            return "malformed", f"image {image_id}: segmentation is neither RLE nor polygons"
    else:
        raise ValueError(f"iou type must be one of {IOU_TYPES}, got {iou_type!r}")
    return None


def _all_valid_boxes(results: Sequence[Any], gt: Mapping[str, Any]) -> bool:
    """True when every result is a valid bbox result, checked column-wise with numpy (50k results in
    tens of milliseconds); False sends the list through :func:`check_result`, which names the faults."""
    if not results or not all(isinstance(r, dict) for r in results):
        return False
    try:
        image_ids = [r["image_id"] for r in results]
        category_ids = [r["category_id"] for r in results]
        scores = [r["score"] for r in results]
        boxes = [r["bbox"] for r in results]
    except KeyError:
        return False
    # exact types first: numpy would quietly turn True into 1 and "3" into 3.0
    if not (set(map(type, image_ids)) == set(map(type, category_ids)) == {int}
            and set(map(type, scores)) <= {int, float} and set(map(type, boxes)) <= {list, tuple}
            and set(map(len, boxes)) == {4} and set(map(type, (v for b in boxes for v in b))) <= {int, float}):
        return False
    xywh = np.asarray(boxes, dtype=np.float64)
    return bool(np.isfinite(xywh).all() and np.isfinite(np.asarray(scores, dtype=np.float64)).all()
                and (xywh[:, 2:] >= 0).all()
                and np.isin(image_ids, [img["id"] for img in gt["images"]]).all()
                and np.isin(category_ids, [c["id"] for c in gt["categories"]]).all())


def validate_results(
    results: Sequence[Any], iou_type: str, gt: Mapping[str, Any], *, strict: bool = True,
    source: str = "results",
) -> tuple[list[dict[str, Any]], ResultsReport]:
    """Check results against the GT dict; raise CocoFormatError (strict) or drop and report.

    pycocotools would assert on unknown image ids and silently ignore unknown category ids;
    neither is allowed to pass unnoticed here.
    """
    if not isinstance(results, list | tuple):
        raise CocoFormatError(f"{source}: results must be a JSON list, got {type(results).__name__}")
    if iou_type == "bbox" and _all_valid_boxes(results, gt):
        return list(results), ResultsReport()
    images = {img["id"]: img for img in gt["images"]}
    category_ids = {c["id"] for c in gt["categories"]}
    report = ResultsReport()
    kept = []
    for i, result in enumerate(results):
        problem = check_result(result, iou_type, images, category_ids)
        if problem is None:
            kept.append(result)
            continue
        kind, detail = problem
        if kind == "image":
            report.unknown_image_ids.add(detail)
        elif kind == "category":
            report.unknown_category_ids.add(detail)
        else:
            report.malformed.append(f"[{i}] {detail}")
        report.dropped += 1
    if strict and not report.ok:
        raise CocoFormatError(f"{source}: {report.describe()}")
    return kept, report
