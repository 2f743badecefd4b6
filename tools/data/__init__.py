"""COCO-format data: datasets, augmentation, batching and the synthetic shapes dataset.

Names are imported from their submodules on first use (PEP 562), so a tool that needs only the
JSON reader or the dataset checks does not load torch and albumentations.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> (submodule, attribute)
_EXPORTS: dict[str, tuple[str, str]] = {
    **{n: ("categories", n) for n in ("CategoryMap",)},
    **{n: ("coco_detection", n) for n in ("CocoDetection", "CocoImageDataset")},
    **{n: ("coco_json", n) for n in ("coco_from_dict", "load_coco_gt", "read_json", "validate_coco_gt")},
    **{n: ("coco_semantic", n) for n in ("VOC_COCO_CATEGORY_IDS", "CocoSemantic")},
    **{n: ("collate", n) for n in ("collate_detection", "collate_segmentation")},
    **{n: ("errors", n) for n in ("CocoFormatError", "ImageLoadError", "DatasetError")},
    **{n: ("images", n) for n in ("load_rgb",)},
    **{n: ("sampler", n) for n in ("GroupedBatchSampler", "aspect_ratio_group_ids", "build_train_sampler",
                                   "seeded_generator")},
    "SHAPES_CATEGORIES": ("shapes", "CATEGORIES"),
    **{n: ("shapes", n) for n in ("ShapesDataset", "ShapesParams", "make_shapes_dataset")},
    **{n: ("transforms", n) for n in ("IGNORE_INDEX", "IMAGENET_MEAN", "IMAGENET_STD", "DetectionTransform",
                                      "SegmentationTransform", "build_detection_transforms",
                                      "build_segmentation_transforms")},
    **{n: ("palette", n) for n in ("class_colour", "colorize", "palette_array")},
    **{n: ("draw", n) for n in ("coco_to_drawable", "draw_gt_and_predictions", "draw_instances", "save_png",
                                "to_uint8_image")},
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'backbones_tools.data' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = getattr(importlib.import_module(f"backbones_tools.data.{module}"), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
