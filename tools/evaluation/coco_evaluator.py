"""COCO bbox/segm evaluation with the exact numbers of ``pycocotools.COCOeval``."""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from backbones_tools.data.categories import CategoryMap
from backbones_tools.data.coco_json import coco_from_dict, read_json, validate_coco_gt
from backbones_tools.distributed import all_gather_object
from backbones_tools.evaluation.backends import get_backend
from backbones_tools.evaluation.results import IOU_TYPES, ResultsReport, prediction_to_results, validate_results

logger = logging.getLogger(__name__)

#: Names of the 12 numbers of ``COCOeval.stats`` in COCOeval's order.
STAT_NAMES: tuple[str, ...] = (
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)


@dataclass
class CocoEvalResult:
    """Outcome of one IoU type: the 12 stats, the per-category table and COCOeval's printout."""

    iou_type: str
    stats: list[float]
    per_category: list[dict[str, Any]]
    summary: str
    report: ResultsReport = field(default_factory=ResultsReport)
    coco_eval: Any = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        """Stats by name (0-1 scale)."""
        return dict(zip(STAT_NAMES, self.stats))


def per_category_ap(coco_eval: Any, categories: Mapping[int, str]) -> list[dict[str, Any]]:
    """Per-category AP, AP50, AP75 (area all, maxDets 100) read from ``coco_eval.eval['precision']``
    (``[T, R, K, A, M]``); a category without ground truth gets NaN, as COCOeval's -1 means."""
    precision = np.asarray(coco_eval.eval["precision"])
    params = coco_eval.params
    iou_thrs = np.asarray(params.iouThrs)
    rows = []

    def mean_valid(p: np.ndarray) -> float:
        valid = p[p > -1]
        return float(np.mean(valid)) if valid.size else math.nan

    for k, cat_id in enumerate(params.catIds):
        p = precision[:, :, k, 0, -1]
        rows.append({
            "category_id": int(cat_id),
            "name": categories.get(int(cat_id), str(cat_id)),
            "AP": mean_valid(p),
            "AP50": mean_valid(p[np.isclose(iou_thrs, 0.5)]),
            "AP75": mean_valid(p[np.isclose(iou_thrs, 0.75)]),
        })
    return rows


def format_table(result: CocoEvalResult) -> str:
    """Plain-text table: the 12 stats then per-category AP (in percent)."""
    lines = [f"[{result.iou_type}] " + "  ".join(
        f"{n}={v * 100:.2f}" if v >= 0 else f"{n}=n/a" for n, v in zip(STAT_NAMES, result.stats))]
    width = max([len(r["name"]) for r in result.per_category] + [8])
    lines.append(f"{'category':<{width}}  {'id':>5}  {'AP':>6}  {'AP50':>6}  {'AP75':>6}")
    for r in result.per_category:
        vals = "  ".join(f"{r[k] * 100:6.2f}" if not math.isnan(r[k]) else f"{'n/a':>6}"
                         for k in ("AP", "AP50", "AP75"))
        lines.append(f"{r['name']:<{width}}  {r['category_id']:>5}  {vals}")
    return "\n".join(lines)


def _fresh_dataset(gt: Mapping[str, Any]) -> dict[str, Any]:
    """``gt`` with new lists of copied image, annotation and category dicts (see run_cocoeval)."""
    lists = ("images", "annotations", "categories")
    return {**gt, **{key: [dict(item) for item in gt[key]] for key in lists if key in gt}}


def run_cocoeval(
    gt: Mapping[str, Any], results: Sequence[Mapping[str, Any]], iou_type: str,
    backend: str = "pycocotools", img_ids: Iterable[int] | None = None,
) -> tuple[Any, str]:
    """Run evaluate/accumulate/summarize on validated inputs; returns ``(coco_eval, printout)``.

    ``loadRes`` and ``COCOeval`` set keys of the annotation and result dicts (``area``, ``id``,
    ``iscrowd``, ``ignore``, ``segmentation`` as RLE) but change nothing inside them, so a copy of
    each dict keeps the caller's data intact at a fraction of a deep copy's cost (the deep copy was
    about a quarter of ``eval_coco.py``'s time; ``tools/measure_eval_speed.py`` times it). An empty
    list is evaluated against an empty detection set, giving AP 0 where ground truth exists instead
    of pycocotools' crash.
    """
    be = get_backend(backend)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        coco_gt = coco_from_dict(_fresh_dataset(gt), be.coco_cls)
        if results:
            coco_dt = coco_gt.loadRes([dict(r) for r in results])
        else:
            coco_dt = coco_from_dict({**_fresh_dataset(gt), "annotations": []}, be.coco_cls)
        coco_eval = be.make_eval(coco_gt, coco_dt, iou_type)
        if img_ids is not None:
            coco_eval.params.imgIds = sorted(set(img_ids))
        coco_eval.evaluate()
        coco_eval.accumulate()
        summary = io.StringIO()
        with contextlib.redirect_stdout(summary):
            coco_eval.summarize()
    return coco_eval, summary.getvalue()


class CocoEvaluator:
    """Collects predictions (torchvision outputs or COCO result dicts) and scores them with COCOeval.

    ``gt`` is a COCO ground-truth path or dict; ``category_map`` maps predicted labels back to
    category ids (default: all GT categories sorted by id). Under DDP, :meth:`evaluate` gathers the
    predictions of every rank with ``all_gather_object`` and keeps the first occurrence of each
    image id (DistributedSampler pads with duplicates). All images of the GT are evaluated, as
    COCOeval does, unless ``only_seen_images`` restricts it to the images passed to
    :meth:`update`. ``strict`` makes unknown image/category ids and malformed results an error;
    otherwise they are dropped and reported. Annotation id 0 in the GT is always an error.
    """

    def __init__(
        self,
        gt: str | os.PathLike[str] | Mapping[str, Any],
        iou_types: Sequence[str] = ("bbox",),
        *,
        category_map: CategoryMap | None = None,
        backend: str = "pycocotools",
        strict: bool = True,
        only_seen_images: bool = False,
        mask_threshold: float = 0.5,
    ) -> None:
        source = "<dict>" if isinstance(gt, Mapping) else str(gt)
        data = gt if isinstance(gt, Mapping) else read_json(gt)
        validate_coco_gt(data, source, allow_annotation_id_zero=False)
        for t in iou_types:
            if t not in IOU_TYPES:
                raise ValueError(f"iou type must be one of {IOU_TYPES}, got {t!r}")
        get_backend(backend)  # fail early on a bad name / missing package
        self.gt = data
        self.gt_source = source
        self.iou_types = tuple(iou_types)
        self.category_map = category_map or CategoryMap.from_coco_categories(data["categories"])
        unknown = [c for c in self.category_map.category_ids
                   if c not in {cat["id"] for cat in data["categories"]}]
        if unknown:
            raise ValueError(f"category map ids {unknown} are not categories of {source}")
        self.backend = backend
        self.strict = strict
        self.only_seen_images = only_seen_images
        self.mask_threshold = mask_threshold
        self.reset()

    def reset(self) -> None:
        """Forget all collected predictions."""
        self._per_image: dict[int, dict[str, list[dict[str, Any]]]] = {}
        self._local_duplicates = 0
        self.num_duplicates = 0

    def update(self, predictions: Mapping[int, Mapping[str, Any]]) -> None:
        """Add torchvision outputs keyed by image id (boxes in the original image's pixels).

        An image id already collected is ignored (and counted in :attr:`num_duplicates`).
        """
        for image_id, pred in predictions.items():
            image_id = int(image_id)
            if image_id in self._per_image:
                self._local_duplicates += 1
                self.num_duplicates = self._local_duplicates
                continue
            self._per_image[image_id] = prediction_to_results(
                image_id, pred, self.category_map, self.iou_types, self.mask_threshold)

    def add_batch(self, targets: Sequence[Mapping[str, Any]], outputs: Sequence[Mapping[str, Any]]) -> None:
        """Add a batch of detector outputs, taking image ids from the matching targets."""
        self.update({int(t["image_id"]): o for t, o in zip(targets, outputs)})

    def add_results(self, results: Iterable[Mapping[str, Any]], iou_type: str | None = None) -> None:
        """Add COCO-format result dicts (category ids, bbox xywh / RLE) for one IoU type."""
        iou_type = iou_type or self.iou_types[0]
        if iou_type not in self.iou_types:
            raise ValueError(f"iou type {iou_type!r} is not among {self.iou_types}")
        for r in results:
            image_id = r.get("image_id") if isinstance(r, Mapping) else None
            slot = self._per_image.setdefault(image_id, {t: [] for t in self.iou_types})
            slot[iou_type].append(dict(r))

    def _gathered(self) -> dict[int, dict[str, list[dict[str, Any]]]]:
        merged: dict[int, dict[str, list[dict[str, Any]]]] = {}
        self.num_duplicates = self._local_duplicates
        for part in all_gather_object(self._per_image):
            for image_id, res in part.items():
                if image_id in merged:
                    self.num_duplicates += 1
                    continue
                merged[image_id] = res
        if self.num_duplicates:
            logger.info("dropped %d duplicate image ids from the predictions", self.num_duplicates)
        return merged

    def results(self, iou_type: str | None = None) -> list[dict[str, Any]]:
        """The collected COCO results of one IoU type (this rank's, un-gathered)."""
        iou_type = iou_type or self.iou_types[0]
        return [r for res in self._per_image.values() for r in res.get(iou_type, [])]

    def evaluate(self) -> dict[str, CocoEvalResult]:
        """Gather (DDP), validate and evaluate every IoU type; call on all ranks."""
        merged = self._gathered()
        names = {int(c["id"]): str(c.get("name", c["id"])) for c in self.gt["categories"]}
        img_ids = sorted(k for k in merged if isinstance(k, int)) if self.only_seen_images else None
        out = {}
        for iou_type in self.iou_types:
            raw = [r for res in merged.values() for r in res.get(iou_type, [])]
            results, report = validate_results(raw, iou_type, self.gt, strict=self.strict,
                                               source=f"{iou_type} predictions")
            if not report.ok:
                logger.warning("%s predictions: %s (dropped %d)", iou_type, report.describe(),
                               report.dropped)
            coco_eval, summary = run_cocoeval(self.gt, results, iou_type, self.backend, img_ids)
            stats = [float(v) for v in coco_eval.stats[: len(STAT_NAMES)]]
            out[iou_type] = CocoEvalResult(iou_type, stats, per_category_ap(coco_eval, names),
                                           summary, report, coco_eval)
        return out

    def write_results(self, path: str | os.PathLike[str], iou_type: str | None = None) -> Path:
        """Write this rank's results of one IoU type as a COCO results JSON."""
        from backbones_tools.files import atomic_write_json

        return atomic_write_json(path, self.results(iou_type))
