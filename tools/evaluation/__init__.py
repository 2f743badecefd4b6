"""COCO bbox/segm evaluation (pycocotools-exact) and semantic segmentation metrics.

Names are imported from their submodules on first use (PEP 562): scoring a results file needs
neither torch nor the segmentation metrics.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    **dict.fromkeys(("BACKENDS", "CocoBackend", "get_backend"), "backends"),
    **dict.fromkeys(("STAT_NAMES", "CocoEvalResult", "CocoEvaluator", "format_table", "per_category_ap",
                     "run_cocoeval"), "coco_evaluator"),
    **dict.fromkeys(("ResultsReport", "encode_masks", "prediction_to_results", "validate_results"), "results"),
    **dict.fromkeys(("SegmentationMetrics", "metrics_from_confusion"), "seg_metrics"),
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'backbones_tools.evaluation' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"backbones_tools.evaluation.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
