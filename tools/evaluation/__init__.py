"""COCO bbox/segm evaluation (pycocotools-exact) and semantic segmentation metrics."""

from tools.evaluation.backends import BACKENDS, CocoBackend, get_backend
from tools.evaluation.coco_evaluator import (
    STAT_NAMES,
    CocoEvalResult,
    CocoEvaluator,
    format_table,
    per_category_ap,
    run_cocoeval,
)
from tools.evaluation.results import (
    ResultsReport,
    encode_masks,
    prediction_to_results,
    validate_results,
)
from tools.evaluation.seg_metrics import SegmentationMetrics, metrics_from_confusion

__all__ = [
    "BACKENDS", "CocoBackend", "get_backend", "STAT_NAMES", "CocoEvalResult", "CocoEvaluator",
    "format_table", "per_category_ap", "run_cocoeval", "ResultsReport", "encode_masks",
    "prediction_to_results", "validate_results", "SegmentationMetrics", "metrics_from_confusion",
]
