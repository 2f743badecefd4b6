"""COCO detection / instance-segmentation dataset in torchvision's target format."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from backbones_tools.data.categories import CategoryMap
from backbones_tools.data.coco_json import load_coco_gt, read_json
from backbones_tools.data.errors import CocoFormatError, ImageLoadError
from backbones_tools.data.images import load_rgb
from backbones_tools.data.transforms import DetectionTransform, build_detection_transforms
from torch.utils.data import Dataset

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


class CocoImageDataset(Dataset):
    """Common part of the COCO datasets: annotation file, image paths, unreadable-image policy.

    The label map is ``category_map`` when given, else the file's categories (all, or the subset
    ``categories``, ids or names in label order); annotations of other categories are not targets.
    ``skip_image_ids`` / ``skip_annotation_ids`` leave out records a preflight found faulty.
    """

    def __init__(
        self,
        image_dir: PathLike,
        ann_file: PathLike | Mapping[str, Any],
        *,
        categories: Iterable[int | str] | None = None,
        category_map: CategoryMap | None = None,
        skip_unreadable: bool = False,
        skip_image_ids: Collection[int] = (),
        skip_annotation_ids: Collection[int] = (),
    ) -> None:
        self.image_dir = Path(image_dir)
        self.ann_file = ann_file if isinstance(ann_file, Mapping) else Path(ann_file)
        skipped_images, skipped_anns = set(skip_image_ids), frozenset(skip_annotation_ids)
        if skipped_images or skipped_anns:  # leave them out before indexing: they may not validate
            data = ann_file if isinstance(ann_file, Mapping) else read_json(ann_file)
            listed = {img.get("id") for img in data.get("images", [])}
            self.skipped_image_ids = sorted(skipped_images & listed)
            ann_file = {**data, "images": [i for i in data["images"] if i.get("id") not in skipped_images],
                        "annotations": [a for a in data["annotations"] if a.get("id") not in skipped_anns
                                        and a.get("image_id") not in skipped_images]}
        else:
            self.skipped_image_ids = []
        self.skipped_annotation_ids = skipped_anns
        self.coco = load_coco_gt(ann_file)
        self.category_map = category_map or CategoryMap.from_coco_categories(
            self.coco.dataset["categories"], subset=categories
        )
        self.skip_unreadable = skip_unreadable
        self.num_unreadable = 0
        self.ids: list[int] = sorted(self.coco.imgs)

    def annotations_of(self, img_id: int) -> list[dict]:
        """The image's annotations (those left out by ``skip_annotation_ids`` are not indexed)."""
        return self.coco.imgToAnns.get(img_id, [])

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> Path:
        """Path of the image at ``index``."""
        return self.image_dir / self.coco.imgs[self.ids[index]]["file_name"]

    def aspect_ratios(self) -> list[float]:
        """Width / height of every image, from the annotation file (no image is decoded)."""
        infos = [self.coco.imgs[i] for i in self.ids]
        return [float(info["width"]) / float(info["height"]) for info in infos]

    def load_image(self, index: int) -> np.ndarray:
        """Decode image ``index`` as RGB and check its size against the annotation file."""
        path = self.image_path(index)
        image = load_rgb(path)
        info = self.coco.imgs[self.ids[index]]
        if "height" in info and (image.shape[0], image.shape[1]) != (info["height"], info["width"]):
            raise CocoFormatError(
                f"{path}: decoded size {image.shape[1]}x{image.shape[0]} (WxH) differs from "
                f"the annotation file's {info['width']}x{info['height']} for image id {self.ids[index]}"
            )
        return image

    def __getitem__(self, index: int) -> Any:
        attempts = len(self) if self.skip_unreadable else 1
        for step in range(attempts):
            i = (index + step) % len(self)
            try:
                return self.get_item(i, self.load_image(i))
            except (FileNotFoundError, ImageLoadError) as exc:
                if not self.skip_unreadable:
                    raise
                self.num_unreadable += 1
                logger.warning("skipping unreadable image (%d so far): %s", self.num_unreadable, exc)
        raise ImageLoadError(f"no readable image left in {self.image_dir}")

    def get_item(self, index: int, image: np.ndarray) -> Any:  # pragma: no cover - abstract
        """Build the sample for ``index`` from its decoded image."""
        raise NotImplementedError


class CocoDetection(CocoImageDataset):
    """COCO images with torchvision detection targets.

    A sample is ``(image float [3, H, W] in 0..1, target)`` with ``target`` holding ``boxes``
    (xyxy float32), ``labels`` (int64, contiguous 1..K from :attr:`category_map`), ``masks``
    (uint8 ``[N, H, W]``, when ``return_masks``), ``image_id`` (int), ``area``, ``iscrowd`` and
    ``orig_size`` (``[H, W]`` of the file). Crowd annotations and categories outside the map are
    not targets; boxes with width or height below ``min_box_size`` are dropped and counted in
    :attr:`num_dropped_boxes`. ``skip_empty`` (training only) drops images left without boxes.
    """

    def __init__(
        self,
        image_dir: PathLike,
        ann_file: PathLike | Mapping[str, Any],
        transforms: DetectionTransform | Callable | None = None,
        *,
        return_masks: bool = False,
        categories: Iterable[int | str] | None = None,
        category_map: CategoryMap | None = None,
        skip_empty: bool = False,
        skip_unreadable: bool = False,
        min_box_size: float = 1.0,
        skip_image_ids: Collection[int] = (),
        skip_annotation_ids: Collection[int] = (),
    ) -> None:
        super().__init__(image_dir, ann_file, categories=categories, category_map=category_map,
                         skip_unreadable=skip_unreadable, skip_image_ids=skip_image_ids,
                         skip_annotation_ids=skip_annotation_ids)
        self.transforms = transforms or build_detection_transforms(train=False)
        self.return_masks = return_masks
        self._anns: dict[int, list[dict]] = {}
        dropped: list[int] = []
        for img_id in self.ids:
            kept = []
            for ann in self.annotations_of(img_id):
                if ann.get("iscrowd", 0) or ann["category_id"] not in self.category_map:
                    continue
                _, _, w, h = ann["bbox"]
                if w < min_box_size or h < min_box_size:
                    dropped.append(ann["id"])
                    continue
                kept.append(ann)
            self._anns[img_id] = kept
        self.num_dropped_boxes = len(dropped)
        if dropped:
            logger.warning(
                "%s: dropped %d annotations with width or height < %g (ids %s%s)",
                self.ann_file if not isinstance(self.ann_file, Mapping) else "<dict>",
                len(dropped), min_box_size, dropped[:10], " ..." if len(dropped) > 10 else "",
            )
        if skip_empty:
            self.ids = [i for i in self.ids if self._anns[i]]

    def annotations(self, index: int) -> list[dict]:
        """The COCO annotations used as targets for image ``index``."""
        return self._anns[self.ids[index]]

    def get_item(self, index: int, image: np.ndarray) -> tuple[torch.Tensor, dict[str, Any]]:
        """Build ``(image, target)`` for ``index``."""
        img_id = self.ids[index]
        anns = self._anns[img_id]
        boxes = np.array(
            [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
             for a in anns], dtype=np.float32,
        ).reshape(-1, 4)
        labels = np.array([self.category_map.label(a["category_id"]) for a in anns], dtype=np.int64)
        masks = [self.coco.annToMask(a) for a in anns] if self.return_masks else None
        tensor, target = self.transforms(image, boxes, labels, masks)
        b = target["boxes"]
        target["image_id"] = img_id
        target["area"] = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        target["iscrowd"] = torch.zeros(len(b), dtype=torch.int64)
        target["orig_size"] = torch.tensor(image.shape[:2], dtype=torch.int64)
        return tensor, target
