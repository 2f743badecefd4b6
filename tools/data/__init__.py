"""COCO-format data: datasets, augmentation, batching and the synthetic shapes dataset."""

from tools.data.categories import CategoryMap
from tools.data.coco_detection import CocoDetection, CocoImageDataset
from tools.data.coco_json import coco_from_dict, load_coco_gt, read_json, validate_coco_gt
from tools.data.coco_semantic import VOC_COCO_CATEGORY_IDS, CocoSemantic
from tools.data.collate import collate_detection, collate_segmentation
from tools.data.errors import CocoFormatError, ImageLoadError
from tools.data.images import load_rgb
from tools.data.sampler import (
    GroupedBatchSampler,
    aspect_ratio_group_ids,
    build_train_sampler,
    seeded_generator,
)
from tools.data.shapes import CATEGORIES as SHAPES_CATEGORIES
from tools.data.shapes import ShapesDataset, ShapesParams, make_shapes_dataset
from tools.data.transforms import (
    IGNORE_INDEX,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DetectionTransform,
    SegmentationTransform,
    build_detection_transforms,
    build_segmentation_transforms,
)

__all__ = [
    "CategoryMap", "CocoDetection", "CocoImageDataset", "CocoSemantic", "VOC_COCO_CATEGORY_IDS",
    "coco_from_dict", "load_coco_gt", "read_json", "validate_coco_gt",
    "collate_detection", "collate_segmentation", "CocoFormatError", "ImageLoadError", "load_rgb",
    "GroupedBatchSampler", "aspect_ratio_group_ids", "build_train_sampler", "seeded_generator",
    "SHAPES_CATEGORIES", "ShapesDataset", "ShapesParams", "make_shapes_dataset",
    "IGNORE_INDEX", "IMAGENET_MEAN", "IMAGENET_STD", "DetectionTransform",
    "SegmentationTransform", "build_detection_transforms", "build_segmentation_transforms",
]

from tools.data.draw import (  # noqa: E402
    coco_to_drawable,
    draw_gt_and_predictions,
    draw_instances,
    save_png,
    to_uint8_image,
)

__all__ += ["coco_to_drawable", "draw_gt_and_predictions", "draw_instances", "save_png",
            "to_uint8_image"]
