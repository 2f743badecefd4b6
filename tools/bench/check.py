"""Output checks of a row: do the peers that run the same weights compute what our model computes?

Tensors (trunk maps, FPN levels, segmenter logits, a training step's loss) are compared as the
ONNX exporter checks them (:func:`backbones_tools.deploy.onnx_export.compare_outputs`):
``max |peer - ours| <= rtol * max |ours| + atol`` per output. Detections are compared as sets: each of
ours is matched to an unused one of the peer's with the same label and a box within the tolerance,
and their scores must agree; with random weights many boxes are near-degenerate and near-tied, so
NMS may keep a different box at the margin (measured: 99 of 100 matched, boxes within 0.008 px and
scores within 5e-5 for Faster R-CNN R50-FPN at 800 px, ours vs ONNX Runtime), hence
:data:`MIN_MATCHED`. An export bug (wrong op, padding, layout) moves every output by 1e-2 or more of
its scale.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

#: Relative tolerance in float32 on the CPU (the exporter's: a few ulp compounded through the layers).
FP32_RTOL = 1e-4
#: Relative tolerance in reduced precision (float16/bfloat16, autocast) or on a GPU (TF32 convolutions).
LOW_PRECISION_RTOL = 5e-2
#: Relative tolerance of detections (boxes relative to the largest coordinate, scores to the largest score).
DETECTION_RTOL = 1e-3
#: Absolute floor of every tolerance.
ATOL = 1e-6
#: Fraction of the detections that must be matched.
MIN_MATCHED = 0.9


@dataclass
class Diff:
    """The outcome of a check: the largest absolute difference, its tolerance, whether every
    output is within it (None: not compared) and a note."""

    max_abs_diff: float | None = None
    tolerance: float | None = None
    ok: bool | None = None
    note: str = ""

    def record(self) -> dict[str, Any]:
        return {"max_abs_diff": self.max_abs_diff, "diff_tol": self.tolerance, "diff_ok": self.ok,
                "diff_note": self.note}


def rtol_for(device: torch.device, dtype: str, amp: str) -> float:
    """The relative tolerance of a row's checks."""
    return FP32_RTOL if device.type == "cpu" and dtype == "float32" and amp == "none" else LOW_PRECISION_RTOL


def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().float().cpu().numpy() if value.is_floating_point() else value.detach().cpu().numpy()
    return np.asarray(value)


def tensors_of(out: Any) -> list[np.ndarray]:
    """A model's outputs as a list of arrays: a tensor, the values of a dict in order, a sequence."""
    if isinstance(out, Mapping):
        return [_numpy(v) for v in out.values()]
    if isinstance(out, (list, tuple)):
        return [_numpy(v) for v in out]
    return [_numpy(out)]


def detections_of(out: Sequence[Mapping[str, Any]]) -> list[dict[str, np.ndarray]]:
    """A detector's outputs (one dict per image) as arrays."""
    return [{k: _numpy(v) for k, v in image.items()} for image in out]


def compare_tensors(ours: Sequence[np.ndarray], theirs: Sequence[np.ndarray], rtol: float) -> Diff:
    """Every output within ``rtol * max |ours| + ATOL`` (integer outputs: equal)."""
    from backbones_tools.deploy.onnx_export import compare_outputs

    if len(ours) != len(theirs):
        return Diff(note=f"not compared: {len(ours)} outputs in ours, {len(theirs)} in the peer")
    names = [f"output {i}" for i in range(len(ours))]
    checks = compare_outputs(names, theirs, ours, rtol=rtol, atol=ATOL)
    worst = max(checks, key=lambda c: c.max_abs_diff / c.tolerance if c.tolerance else c.max_abs_diff)
    notes = "; ".join(str(c) for c in checks if not c.ok)
    return Diff(max(c.max_abs_diff for c in checks), worst.tolerance, all(c.ok for c in checks), notes)


def compare_detections(ours: Sequence[Mapping[str, np.ndarray]], theirs: Sequence[Mapping[str, np.ndarray]],
                       rtol: float = DETECTION_RTOL) -> Diff:
    """Detections matched per image (same label, box within tolerance, each used once); at least
    :data:`MIN_MATCHED` of them matched and the matched scores within tolerance."""
    if len(ours) != len(theirs):
        return Diff(note=f"not compared: {len(ours)} images in ours, {len(theirs)} in the peer")
    matched = total = 0
    box_diff = score_diff = 0.0
    box_tol = score_tol = ATOL
    for mine, other in zip(ours, theirs):
        boxes, scores, labels = (np.asarray(mine[k], np.float64) for k in ("boxes", "scores", "labels"))
        o_boxes, o_scores, o_labels = (np.asarray(other[k], np.float64) for k in ("boxes", "scores", "labels"))
        total += max(len(boxes), len(o_boxes))
        if not len(boxes) or not len(o_boxes):
            continue
        tol = rtol * float(np.abs(boxes).max()) + ATOL
        s_tol = rtol * float(np.abs(scores).max()) + ATOL
        box_tol, score_tol = max(box_tol, tol), max(score_tol, s_tol)
        used = np.zeros(len(o_boxes), dtype=bool)
        for i in range(len(boxes)):
            distance = np.abs(o_boxes - boxes[i]).max(axis=1)
            distance[(o_labels != labels[i]) | used] = np.inf
            j = int(distance.argmin())
            if distance[j] <= tol:
                used[j] = True
                matched += 1
                box_diff = max(box_diff, float(distance[j]))
                score_diff = max(score_diff, abs(float(o_scores[j] - scores[i])))
    if total == 0:
        return Diff(0.0, box_tol, True, "no detections in either (nothing to compare)")
    ok = matched >= MIN_MATCHED * total and score_diff <= score_tol
    note = (f"{matched}/{total} detections matched (same label, box within {box_tol:.2g} px); "
            f"largest score difference {score_diff:.1e} (tol {score_tol:.1e})")
    return Diff(max(box_diff, score_diff), box_tol, ok, note)


def compare(kind: str, mode: str, ours: Any, theirs: Any, rtol: float) -> Diff:
    """Compare the reference outputs of a row (see :class:`backbones_tools.bench.models.Workload`)."""
    if kind == "detector" and mode == "inference":
        return compare_detections(detections_of(ours), detections_of(theirs), max(rtol, DETECTION_RTOL))
    return compare_tensors(tensors_of(ours), tensors_of(theirs), rtol)


def runtime_outputs(kind: str, names: Sequence[str], outputs: Sequence[Sequence[np.ndarray]]) -> Any:
    """A runtime's outputs (per input array, in ``names`` order) in the form :func:`compare` takes:
    one dict per image for a detector, the arrays of the one batch otherwise."""
    if kind == "detector":
        return [dict(zip(names, image)) for image in outputs]
    return list(outputs[0])
