"""Confusion matrices and precision-recall curves.

Detection (:func:`detection_confusion`), as MMDetection's ``tools/analysis_tools/confusion_matrix.py``
defines it: a ``(K + 1) x (K + 1)`` matrix of counts, rows the ground-truth class, columns the
detected class, the last row and column ``background``. Per image, every detection with
``score >= score_thr`` is compared with every ground-truth box by IoU:

* each ground truth it overlaps with ``IoU >= iou_thr`` adds 1 at ``[gt class, detected class]``
  (so a detection over two objects counts twice, and duplicate detections of one object all count);
* a detection overlapping no ground truth adds 1 at ``[background, detected class]`` (false positive);
* a ground truth that no detection *of its own class* matched adds 1 at ``[gt class, background]``
  (missed), so an object found only with the wrong class counts in both its confused cell and the
  background column.

One departure: crowd regions (``iscrowd: 1``) are not objects to find (never in the background
column), and a detection inside one (intersection over the detection's area ``>= iou_thr``, as
COCOeval matches crowds) is not a false positive. Rows are normalised to sum 1 for the picture.

Precision-recall curves (:func:`pr_curves`) are COCOeval's interpolated precision at its 101
recall points (``eval['precision'][T, R, K, A, M]``, area ``all``, ``maxDets`` 100), per class at
IoU 0.5 and 0.75.

Segmentation (:func:`seg_confusion`): the pixel confusion matrix of
:class:`~backbones_tools.evaluation.SegmentationMetrics` (rows ground truth, columns prediction, background
label 0 first, ``ignore_index`` pixels not counted), recomputed by evaluating a run's checkpoint on
its val split the way :func:`backbones_tools.engine.evaluate_checkpoint` does.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torchvision.ops import box_convert, box_iou

from backbones_tools.analysis import AnalysisError
from backbones_tools.data.categories import CategoryMap
from backbones_tools.data.coco_json import read_json, validate_coco_gt
from backbones_tools.evaluation import metrics_from_confusion, run_cocoeval, validate_results

#: cells are annotated with their numbers up to this many classes
ANNOTATE_UP_TO = 30


@dataclass
class ConfusionMatrix:
    """Counts ``[C, C]`` (rows ground truth, columns prediction) and the names of the C labels."""

    counts: np.ndarray
    names: list[str]

    def normalized(self) -> np.ndarray:
        """Each row divided by its sum (a row without counts is NaN)."""
        sums = self.counts.sum(axis=1, keepdims=True).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(sums > 0, self.counts / np.where(sums > 0, sums, 1), np.nan)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: names, counts and the row-normalised matrix (NaN as None)."""
        norm = [[None if math.isnan(v) else float(v) for v in row] for row in self.normalized()]
        return {"names": list(self.names), "counts": self.counts.tolist(), "normalized": norm}


# ----------------------------------------------------------------------------- detection


def _xyxy(boxes: Sequence[Sequence[float]]) -> torch.Tensor:
    """COCO ``[x, y, w, h]`` boxes as an ``[N, 4]`` float64 ``x1, y1, x2, y2`` tensor."""
    xywh = torch.tensor([list(map(float, x)) for x in boxes], dtype=torch.float64).reshape(-1, 4)
    return box_convert(xywh, "xywh", "xyxy")


def _inside(dets: torch.Tensor, regions: torch.Tensor, thr: float) -> torch.Tensor:
    """Per detection: intersection with some region over the detection's own area ``>= thr``."""
    if not len(regions) or not len(dets):
        return torch.zeros(len(dets), dtype=torch.bool)
    lt = torch.max(dets[:, None, :2], regions[None, :, :2])
    rb = torch.min(dets[:, None, 2:], regions[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    area = ((dets[:, 2:] - dets[:, :2]).clamp(min=0).prod(dim=1))[:, None]
    return ((inter >= thr * area) & (area > 0)).any(dim=1)


def load_detection_inputs(gt_path: str | os.PathLike[str],
                          results_path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ground truth and the bbox results, validated (a problem is a CocoFormatError naming it)."""
    gt = read_json(gt_path)
    validate_coco_gt(gt, str(gt_path))
    results, _ = validate_results(read_json(results_path), "bbox", gt, strict=True, source=str(results_path))
    return gt, results


def detection_confusion(gt: Mapping[str, Any], results: Sequence[Mapping[str, Any]],
                        iou_thr: float = 0.5, score_thr: float = 0.3) -> ConfusionMatrix:
    """The detection confusion matrix of validated COCO ``results`` (see the module docstring);
    classes in category-id order, then ``background``."""
    cmap = CategoryMap.from_coco_categories(gt["categories"])
    k = cmap.num_classes
    counts = np.zeros((k + 1, k + 1), dtype=np.int64)
    objects, crowds, dets = defaultdict(list), defaultdict(list), defaultdict(list)
    for a in gt["annotations"]:
        (crowds if a.get("iscrowd", 0) else objects)[a["image_id"]].append(a)
    for r in results:
        if r["score"] >= score_thr:
            dets[r["image_id"]].append(r)
    for image in gt["images"]:
        gts, found = objects[image["id"]], dets[image["id"]]
        gt_labels = np.array([cmap.label(a["category_id"]) - 1 for a in gts], dtype=np.int64)
        det_labels = np.array([cmap.label(r["category_id"]) - 1 for r in found], dtype=np.int64)
        det_boxes = _xyxy([r["bbox"] for r in found])
        matched = (box_iou(det_boxes, _xyxy([a["bbox"] for a in gts])) >= iou_thr).numpy()
        di, gi = matched.nonzero()
        np.add.at(counts, (gt_labels[gi], det_labels[di]), 1)
        found_right = np.zeros(len(gts), dtype=bool)
        found_right[gi[gt_labels[gi] == det_labels[di]]] = True
        on_crowd = _inside(det_boxes, _xyxy([a["bbox"] for a in crowds[image["id"]]]), iou_thr).numpy()
        np.add.at(counts, (k, det_labels[~matched.any(axis=1) & ~on_crowd]), 1)
        np.add.at(counts, (gt_labels[~found_right], k), 1)
    return ConfusionMatrix(counts, [*cmap.names, "background"])


@dataclass
class PRCurves:
    """Interpolated precision at COCOeval's recall points, per class and IoU threshold."""

    recall: np.ndarray
    #: class name -> {IoU threshold: precision [R]}; classes without ground truth are left out
    precision: dict[str, dict[float, np.ndarray]]
    #: class name -> {IoU threshold: AP}
    ap: dict[str, dict[float, float]]
    no_ground_truth: list[str]


def pr_curves(gt: Mapping[str, Any], results: Sequence[Mapping[str, Any]],
              iou_thrs: Sequence[float] = (0.5, 0.75)) -> PRCurves:
    """Per-class precision-recall curves from ``COCOeval.eval['precision']`` (bbox, area all,
    maxDets 100) at each of ``iou_thrs``."""
    coco_eval, _ = run_cocoeval(gt, list(results), "bbox")
    p = coco_eval.params
    precision = np.asarray(coco_eval.eval["precision"])  # [T, R, K, A, M]
    a, m = list(p.areaRngLbl).index("all"), list(p.maxDets).index(100)
    names = {int(c["id"]): str(c.get("name", c["id"])) for c in gt["categories"]}
    curves: dict[str, dict[float, np.ndarray]] = {}
    aps: dict[str, dict[float, float]] = {}
    missing = []
    for k, cat_id in enumerate(p.catIds):
        name = names[int(cat_id)]
        per_thr = {float(t): precision[int(np.argmin(np.abs(np.asarray(p.iouThrs) - t))), :, k, a, m]
                   for t in iou_thrs}
        if all((c < 0).all() for c in per_thr.values()):
            missing.append(name)
            continue
        curves[name] = per_thr
        aps[name] = {t: float(c[c > -1].mean()) for t, c in per_thr.items()}
    return PRCurves(np.asarray(p.recThrs), curves, aps, missing)


# ----------------------------------------------------------------------------- segmentation


@dataclass
class SegConfusion:
    """A segmentation run's pixel confusion matrix and the metrics computed from it."""

    matrix: ConfusionMatrix
    metrics: dict[str, Any]
    checkpoint: Path
    split: str


def seg_confusion(run: str | os.PathLike[str], checkpoint: str = "best.pth", split: str | None = None,
                  data_root: str | None = None) -> SegConfusion:
    """Evaluate ``run/checkpoint`` (or a checkpoint path) on ``split`` (default the run's
    ``data.val_split``) and return the pixel confusion matrix, as
    :func:`backbones_tools.engine.evaluate_checkpoint` builds the model and loader (the checkpoint's config
    and category map, the preflight's exclusions)."""
    from backbones import optimize_for_inference
    from backbones_tools import distributed as D
    from backbones_tools.engine.checkpoint import load_checkpoint
    from backbones_tools.engine.data import build_eval_loader, prepare_data_root
    from backbones_tools.engine.preflight import run_preflight
    from backbones_tools.engine.run_checkpoint import checkpoint_config, load_run_weights, saved_category_map
    from backbones_tools.engine.tasks import make_task
    from backbones_tools.evaluation import SegmentationMetrics

    path = Path(run)
    path = path / checkpoint if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    state = load_checkpoint(path)
    if state.get("task") != "seg":
        raise AnalysisError(f"{path} is a {state.get('task')!r} checkpoint; seg-confusion needs a segmentation "
                            "run (for detection: confusion --gt ANN.json --results PREDICTIONS.json)")
    cfg = checkpoint_config(path, state)
    updates: dict[str, Any] = {"val_split": split} if split else {}
    if data_root:
        updates.update(root=data_root, generate_shapes=False)
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update=updates)})
    ctx = D.init_distributed(cfg.train.device)
    root = prepare_data_root(cfg.data, ctx, (cfg.data.val_split,))
    task = make_task(cfg, root)
    task.exclusions = run_preflight(root, {"val": cfg.data.val_split}, task.check_iou_type,
                                    cfg.data.skip_invalid).exclusions
    _, val_ds = task.build_datasets(train=False, val=True, category_map=saved_category_map(path, state))
    model = task.build_model(task.category_map.num_classes)
    load_run_weights(model, state, path)
    model = optimize_for_inference(model.to(ctx.device)).eval()
    seg = SegmentationMetrics(task.category_map.num_classes + 1, ignore_index=cfg.model.ignore_index)
    with torch.no_grad():
        for images, masks in build_eval_loader(val_ds, cfg.data, ctx, task.collate):
            seg.update(model(images.to(ctx.device))["out"].argmax(1).cpu(), masks)
    matrix = ConfusionMatrix(seg.confusion.numpy().copy(), ["background", *task.category_map.names])
    return SegConfusion(matrix, metrics_from_confusion(seg.confusion), path, cfg.data.val_split)


# ----------------------------------------------------------------------------- pictures


def _short(n: float) -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}"
    return f"{n:g}"


def plot_confusion(matrix: ConfusionMatrix, out: str | os.PathLike[str], title: str,
                   note: str = "", blank: Sequence[tuple[int, int]] = ()) -> Path:
    """The row-normalised matrix as a heat map (rows ground truth, columns prediction), each cell
    with its share and count; rows without counts and the ``blank`` cells (that cannot count
    anything) grey; ``note`` under it."""
    norm = matrix.normalized()
    for i, j in blank:
        norm[i, j] = np.nan
    n = len(matrix.names)
    side = max(5.5, 0.55 * n + 2.5)
    fig = Figure(figsize=(side + 1.2, side + (0.5 if note else 0)), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    cmap = matplotlib.colormaps["Blues"].with_extremes(bad="0.88")
    im = ax.imshow(np.ma.masked_invalid(norm), cmap=cmap, vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, shrink=0.8, label="share of the row (ground-truth class)")
    ax.set_xticks(range(n), matrix.names, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n), matrix.names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_xticks(np.arange(n + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(n + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", lw=1.5)
    ax.tick_params(which="minor", length=0)
    if n <= ANNOTATE_UP_TO:
        size = 9 if n <= 12 else 7
        for i in range(n):
            for j in range(n):
                if math.isnan(norm[i, j]) or matrix.counts[i, j] == 0:  # empty cells stay empty
                    continue
                share = f"{norm[i, j] * 100:.0f}%" if norm[i, j] >= 0.005 else "<1%"
                ax.text(j, i, f"{share}\n{_short(matrix.counts[i, j])}", ha="center", va="center",
                        fontsize=size, color="white" if norm[i, j] > 0.55 else "black")
    ax.set_title(title, fontsize=12)
    if note:
        fig.supxlabel(textwrap.fill(note, int(fig.get_figwidth() * 13)), fontsize=8.5, color="0.25")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def plot_pr_curves(pr: PRCurves, out: str | os.PathLike[str], title: str = "") -> Path:
    """A panel of precision against recall per class (one line per IoU threshold, AP in the
    legend), after a first panel with the mean over classes."""
    names = list(pr.precision)
    if not names:
        raise AnalysisError("no class has ground truth: no precision-recall curve to draw")
    thrs = list(next(iter(pr.precision.values())))
    panels = ["all classes (mean)", *names]
    ncols = min(6, math.ceil(math.sqrt(len(panels))))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(3.6 * ncols, 3.3 * nrows + 0.6), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, name in zip(axes, panels):
        for t, style in zip(thrs, ("-", "--", ":", "-.")):
            if name in pr.precision:
                prec, ap = pr.precision[name][t], pr.ap[name][t]
            else:
                prec = np.mean([pr.precision[c][t] for c in names], axis=0)
                ap = float(np.mean([pr.ap[c][t] for c in names]))
            prec = np.where(prec < 0, np.nan, prec)
            ax.plot(pr.recall, prec, ls=style, lw=1.6, label=f"IoU {t:.2f}: AP {ap * 100:.1f}")
        ax.set(title=name, xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(-0.02, 1.02))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    suptitle = title or "Precision-recall per class (COCOeval, bbox, area all, maxDets 100)"
    if pr.no_ground_truth:
        suptitle += "\nno ground truth: " + ", ".join(pr.no_ground_truth)
    fig.suptitle(suptitle, fontsize=12)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


DETECTION_NOTE = ("background row: detections overlapping no object (false positives); background column: "
                  "objects no detection of their class found (missed). As MMDetection: every overlap "
                  "with IoU >= threshold counts.")


def detection_confusion_figure(matrix: ConfusionMatrix, out: str | os.PathLike[str], iou_thr: float,
                               score_thr: float) -> Path:
    """:func:`plot_confusion` with the detection title and note."""
    title = f"Detection confusion matrix, rows normalised\nIoU >= {iou_thr:g}, score >= {score_thr:g}"
    bg = len(matrix.names) - 1
    return plot_confusion(matrix, out, title, DETECTION_NOTE, blank=[(bg, bg)])


def seg_confusion_figure(result: SegConfusion, out: str | os.PathLike[str]) -> Path:
    """:func:`plot_confusion` with the segmentation title (mIoU, pixel accuracy) and note."""
    m = result.metrics
    title = (f"Segmentation confusion matrix (pixels), rows normalised\n{result.checkpoint.parent.name}/"
             f"{result.checkpoint.name} on {result.split}\nmIoU {m['mIoU'] * 100:.1f}, "
             f"pixel accuracy {m['pixel_accuracy'] * 100:.1f}")
    return plot_confusion(result.matrix, out, title, "ignored pixels are not counted; grey rows: class absent "
                          "from the ground truth")
