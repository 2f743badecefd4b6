"""COCO semantic segmentation: per-pixel class masks built from instance polygons / RLE."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

import numpy as np
import torch
from backbones_tools.data.categories import CategoryMap
from backbones_tools.data.coco_detection import CocoImageDataset, PathLike
from backbones_tools.data.transforms import IGNORE_INDEX, SegmentationTransform, build_segmentation_transforms

#: COCO category ids of the 20 PASCAL VOC classes, in VOC label order 1..20 (aeroplane, bicycle,
#: bird, boat, bottle, bus, car, cat, chair, cow, dining table, dog, horse, motorbike, person,
#: potted plant, sheep, sofa, train, tv monitor) - the subset torchvision's segmentation models use.
VOC_COCO_CATEGORY_IDS: tuple[int, ...] = (
    5, 2, 16, 9, 44, 6, 3, 17, 62, 21, 67, 18, 19, 4, 1, 64, 20, 63, 7, 72,
)


class CocoSemantic(CocoImageDataset):
    """COCO images with semantic masks: background 0, class ``k`` for the k-th category of the
    map, and ``ignore_index`` (255) on crowd regions and where instances of different classes
    overlap.

    ``categories`` picks a subset (ids or names, in label order), e.g.
    :data:`VOC_COCO_CATEGORY_IDS`; objects of other categories become background. A sample is
    ``(image float [3, H, W], mask int64 [H, W])``. ``skip_empty`` (training only) drops images
    with fewer than ``min_pixels`` labelled pixels.
    """

    def __init__(
        self,
        image_dir: PathLike,
        ann_file: PathLike | Mapping[str, Any],
        transforms: SegmentationTransform | Callable | None = None,
        *,
        categories: Iterable[int | str] | None = None,
        category_map: CategoryMap | None = None,
        skip_empty: bool = False,
        min_pixels: int = 1,
        skip_unreadable: bool = False,
        ignore_index: int = IGNORE_INDEX,
        skip_image_ids: Collection[int] = (),
        skip_annotation_ids: Collection[int] = (),
    ) -> None:
        super().__init__(image_dir, ann_file, categories=categories, category_map=category_map,
                         skip_unreadable=skip_unreadable, skip_image_ids=skip_image_ids,
                         skip_annotation_ids=skip_annotation_ids)
        if not self.category_map.num_classes < ignore_index <= 255:
            raise ValueError(
                f"ignore_index={ignore_index} must be above the {self.category_map.num_classes} class "
                "labels and fit a uint8 mask (at most 255)")
        self.ignore_index = ignore_index
        self.transforms = transforms or build_segmentation_transforms(train=False)
        if skip_empty:
            self.ids = [i for i in self.ids if self._labelled_pixels(i) >= min_pixels]

    def _labelled_pixels(self, img_id: int) -> int:
        anns = [a for a in self.annotations_of(img_id)
                if not a.get("iscrowd", 0) and a["category_id"] in self.category_map]
        return int(sum(a.get("area", 0) for a in anns))

    def semantic_mask(self, img_id: int) -> np.ndarray:
        """``uint8 [H, W]`` class mask of image ``img_id`` (before any transform)."""
        info = self.coco.imgs[img_id]
        mask = np.zeros((info["height"], info["width"]), dtype=np.uint8)
        conflict = np.zeros(mask.shape, dtype=bool)
        crowd = np.zeros(mask.shape, dtype=bool)
        for ann in self.annotations_of(img_id):
            if ann["category_id"] not in self.category_map:
                continue
            m = self.coco.annToMask(ann).astype(bool)
            if ann.get("iscrowd", 0):
                crowd |= m
                continue
            label = self.category_map.label(ann["category_id"])
            conflict |= m & (mask != 0) & (mask != label)
            mask[m] = label
        mask[crowd | conflict] = self.ignore_index
        return mask

    def get_item(self, index: int, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Build ``(image, mask)`` for ``index``."""
        return self.transforms(image, self.semantic_mask(self.ids[index]))
