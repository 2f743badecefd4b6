"""Albumentations pipelines for detection/instance and semantic segmentation.

Detection transforms take ``(image uint8 HWC, boxes xyxy, labels, masks | None)`` and return
torch tensors: image float ``[3, H, W]`` in 0..1 (torchvision detectors normalise internally),
boxes ``float32 [N, 4]`` clipped to the image with degenerate boxes (width or height < 1) removed
together with their labels and masks. Segmentation transforms take ``(image, mask)`` and return an
image tensor (optionally ImageNet-normalised) and an ``int64`` mask where ``ignore_index`` (255
by default) marks unlabelled pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IGNORE_INDEX = 255


def _image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """``uint8 [H, W, 3]`` -> ``float32 [3, H, W]`` in 0..1; float input is taken as already scaled."""
    tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    return tensor.float().div_(255.0) if tensor.dtype == torch.uint8 else tensor.float()


class ShortestEdgeResize(A.SmallestMaxSize):
    """Resize the shorter side to a random choice of ``min_sizes`` (scale jitter) while keeping
    the longer side at most ``max_size`` (torchvision/detectron2 ``ResizeShortestEdge``)."""

    def __init__(self, min_sizes: int | Sequence[int], max_size: int | None = None,
                 p: float = 1.0) -> None:
        sizes = [min_sizes] if isinstance(min_sizes, int) else list(min_sizes)
        super().__init__(max_size=sizes, interpolation=cv2.INTER_LINEAR, p=p)
        self.max_longer_side = max_size

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        """Scale of the shorter-side choice, capped by the longer-side limit."""
        out = super().get_params_dependent_on_data(params, data)
        if self.max_longer_side is not None:
            h, w = params["shape"][:2]
            out["scale"] = min(out["scale"], self.max_longer_side / max(h, w))
        return out


class DetectionTransform:
    """Box- and mask-aware albumentations pipeline producing torchvision detection tensors."""

    def __init__(self, transforms: Sequence[A.BasicTransform], min_box_size: float = 1.0) -> None:
        self.min_box_size = min_box_size
        self.pipeline = None if not transforms else A.Compose(
            list(transforms),
            bbox_params=A.BboxParams(
                format="pascal_voc",
                label_fields=["labels", "indices"],
                min_width=min_box_size,
                min_height=min_box_size,
                clip=True,
                filter_invalid_bboxes=True,
            ),
        )

    def __call__(
        self,
        image: np.ndarray,
        boxes: np.ndarray,
        labels: np.ndarray,
        masks: Sequence[np.ndarray] | np.ndarray | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Apply the pipeline; returns ``(image, {"boxes", "labels"[, "masks"]})``."""
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        inputs: dict = {
            "image": image,
            "bboxes": boxes,
            "labels": labels,
            "indices": np.arange(len(boxes), dtype=np.int64),
        }
        has_masks = masks is not None and len(masks) > 0
        if has_masks:
            inputs["masks"] = np.stack([np.asarray(m, dtype=np.uint8) for m in masks])
        out = self.pipeline(**inputs) if self.pipeline is not None else self._identity(inputs)
        img = out["image"]
        h, w = img.shape[:2]
        keep = np.asarray(out["indices"], dtype=np.int64).reshape(-1)
        target = {
            "boxes": torch.as_tensor(np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)),
            "labels": torch.as_tensor(np.asarray(out["labels"], dtype=np.int64).reshape(-1)),
        }
        if masks is not None:
            if has_masks:
                kept = np.asarray(out["masks"])[keep] if len(keep) else np.zeros((0, h, w))
                target["masks"] = torch.as_tensor(kept.astype(np.uint8).reshape(-1, h, w))
            else:
                target["masks"] = torch.zeros((0, h, w), dtype=torch.uint8)
        return _image_to_tensor(img), target


    def _identity(self, inputs: dict) -> dict:
        """No-op pipeline: only clip boxes to the image and drop degenerate ones."""
        h, w = inputs["image"].shape[:2]
        boxes = inputs["bboxes"].copy()
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        ok = ((boxes[:, 2] - boxes[:, 0]) >= self.min_box_size) & (
            (boxes[:, 3] - boxes[:, 1]) >= self.min_box_size)
        out = {k: v[ok] if k != "image" and k != "masks" else v for k, v in inputs.items()}
        out["bboxes"] = boxes[ok]
        return out


def build_detection_transforms(
    train: bool,
    *,
    min_sizes: Sequence[int] = (224, 256, 288, 320),
    max_size: int = 533,
    flip_prob: float = 0.5,
    photometric: bool = True,
    eval_min_size: int | None = None,
) -> DetectionTransform:
    """Default detection pipeline.

    Train: shorter side resized to a random choice of ``min_sizes`` (scale jitter), longer side
    capped at ``max_size``, horizontal flip, colour jitter. Eval: no resize unless
    ``eval_min_size`` is given (torchvision detectors resize internally and map boxes back to the
    input size, which is what COCO evaluation needs).
    """
    ops: list[A.BasicTransform] = []
    if train:
        ops.append(ShortestEdgeResize(min_sizes, max_size))
        if flip_prob > 0:
            ops.append(A.HorizontalFlip(p=flip_prob))
        if photometric:
            ops.append(
                A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.8)
            )
    elif eval_min_size is not None:
        ops.append(ShortestEdgeResize(eval_min_size, max_size))
    return DetectionTransform(ops)


class SegmentationTransform:
    """Albumentations pipeline for ``(image, semantic mask)`` pairs."""

    def __init__(
        self, transforms: Sequence[A.BasicTransform], normalize: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.pipeline = A.Compose(list(transforms))
        self.normalize = normalize
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(image float [3, H, W], mask int64 [H, W])``."""
        out = self.pipeline(image=image, mask=mask)
        tensor = _image_to_tensor(out["image"])
        if self.normalize:
            tensor = (tensor - self.mean) / self.std
        return tensor, torch.as_tensor(np.asarray(out["mask"]).astype(np.int64))


def build_segmentation_transforms(
    train: bool,
    *,
    base_size: int = 256,
    crop_size: int = 224,
    scale_range: tuple[float, float] = (0.5, 2.0),
    flip_prob: float = 0.5,
    photometric: bool = True,
    normalize: bool = True,
    eval_size: int | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> SegmentationTransform:
    """Default segmentation pipeline.

    Train: shorter side to ``base_size``, random scale in ``scale_range``, pad (image 0, mask
    ``ignore_index``) and random crop to ``crop_size``, flip, colour jitter. Eval: optional shorter-side resize
    to ``eval_size``. ``normalize`` applies ImageNet mean/std.
    """
    ops: list[A.BasicTransform] = []
    if train:
        lo, hi = scale_range
        ops += [
            A.SmallestMaxSize(max_size=base_size, interpolation=cv2.INTER_LINEAR),
            A.RandomScale(scale_limit=(lo - 1.0, hi - 1.0), p=1.0),
            A.PadIfNeeded(min_height=crop_size, min_width=crop_size,
                          border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=ignore_index),
            A.RandomCrop(height=crop_size, width=crop_size),
        ]
        if flip_prob > 0:
            ops.append(A.HorizontalFlip(p=flip_prob))
        if photometric:
            ops.append(A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.8))
    elif eval_size is not None:
        ops.append(A.SmallestMaxSize(max_size=eval_size, interpolation=cv2.INTER_LINEAR))
    return SegmentationTransform(ops, normalize=normalize)
