"""The segmentation training loss: cross-entropy on ``out`` plus a weighted auxiliary term."""

from __future__ import annotations

from typing import Mapping

import math

import torch
from torch.nn import functional as F


def _cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int,
                   hard_pixel_fraction: float = 1.0) -> torch.Tensor:
    """Mean cross-entropy over the pixels not equal to ``ignore_index`` (0 when there are none),
    or over the hardest ``hard_pixel_fraction`` of them (bootstrapped cross-entropy)."""
    if hard_pixel_fraction >= 1.0:
        total = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum")
        return total / (target != ignore_index).sum().clamp(min=1)
    per_pixel = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")
    labelled = per_pixel[target != ignore_index]
    k = math.ceil(hard_pixel_fraction * labelled.numel())
    if k == 0:
        return per_pixel.sum() * 0.0
    return labelled.topk(k, sorted=False).values.mean()


def segmentation_loss(
    outputs: Mapping[str, torch.Tensor],
    target: torch.Tensor,
    *,
    ignore_index: int = 255,
    aux_weight: float = 0.5,
    hard_pixel_fraction: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Cross-entropy of ``outputs["out"]`` plus ``aux_weight`` x that of ``outputs["aux"]`` if present
    (torchvision's reference segmentation recipe).

    Args:
        outputs: a segmenter's output, ``{"out": [N, C, H, W]}`` and optionally ``"aux"``.
        target: class indices ``[N, H, W]`` (integer), ``ignore_index`` where unlabelled.
        ignore_index: label excluded from the loss (255: borders, crowds, overlaps).
        aux_weight: weight of the auxiliary term (0.5).
        hard_pixel_fraction: average each term over only this fraction of the labelled pixels,
            those with the largest loss ("bootstrapped" cross-entropy, as in Panoptic-DeepLab's
            ``top_k_percent_pixels``); 1.0 (default) averages over all of them. Helps where a
            large easy class (background) swamps small objects.

    Returns:
        ``{"loss_out": ..., "loss_aux": ... (only with "aux"), "loss": total}``; call
        ``["loss"].backward()``. Each term is the mean over labelled pixels (0 if none is labelled).
    """
    if not isinstance(outputs, Mapping) or "out" not in outputs:
        raise TypeError(f"outputs must be a segmenter's output dict with an 'out' entry; got {type(outputs).__name__}")
    if not isinstance(target, torch.Tensor) or target.dtype.is_floating_point or target.dtype == torch.bool:
        raise TypeError("target must be an integer tensor of class indices [N, H, W]")
    if isinstance(aux_weight, bool) or not isinstance(aux_weight, (int, float)) or aux_weight < 0:
        raise ValueError(f"aux_weight must be a non-negative number; got {aux_weight!r}")
    if isinstance(hard_pixel_fraction, bool) or not isinstance(hard_pixel_fraction, (int, float)) \
            or not 0.0 < hard_pixel_fraction <= 1.0:
        raise ValueError(f"hard_pixel_fraction must be in (0, 1]; got {hard_pixel_fraction!r}")
    target = target.long()
    losses: dict[str, torch.Tensor] = {}
    for name in ("out", "aux"):
        logits = outputs.get(name)
        if logits is None:
            continue
        if logits.dim() != 4 or target.shape != (logits.shape[0], *logits.shape[2:]):
            raise ValueError(
                f"target shape {tuple(target.shape)} does not fit outputs[{name!r}] of shape "
                f"{tuple(logits.shape)}; expected [N, H, W] = {(logits.shape[0], *logits.shape[2:])}"
            )
        num_classes = logits.shape[1]
        bad = (target != ignore_index) & ((target < 0) | (target >= num_classes))
        if bool(bad.any()):
            raise ValueError(
                f"target holds labels outside 0..{num_classes - 1} that are not ignore_index={ignore_index}: "
                f"{sorted(set(target[bad].unique().tolist()))[:10]}"
            )
        losses[f"loss_{name}"] = _cross_entropy(logits, target, ignore_index, hard_pixel_fraction)
    losses["loss"] = losses["loss_out"] + aux_weight * losses["loss_aux"] if "loss_aux" in losses else losses["loss_out"]
    return losses
