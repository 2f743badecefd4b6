"""The segmentation training loss: cross-entropy on ``out`` plus a weighted auxiliary term."""

from __future__ import annotations

from typing import Mapping

import torch
from torch.nn import functional as F


def batch_class_weights(target: torch.Tensor, num_classes: int, ignore_index: int, power: float) -> torch.Tensor:
    """Per-class weights ``(labelled / (present_classes x count_c)) ** power`` from this batch's
    label counts (0 for absent classes): ``power`` 1 gives every present class the same total
    weight, 0 gives every pixel weight 1."""
    labelled = target[target != ignore_index]
    counts = torch.bincount(labelled, minlength=num_classes).to(torch.float32)
    present = counts > 0
    weights = torch.zeros_like(counts)
    if bool(present.any()):
        weights[present] = (labelled.numel() / (present.sum() * counts[present])) ** power
    return weights


def _cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int,
                   class_balance: float = 0.0) -> torch.Tensor:
    """Cross-entropy averaged over the labelled pixels (0 when there are none); with
    ``class_balance`` a weighted average with :func:`batch_class_weights`."""
    if class_balance == 0.0:
        total = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum")
        return total / (target != ignore_index).sum().clamp(min=1)
    weights = batch_class_weights(target, logits.shape[1], ignore_index, class_balance)
    if not bool((weights > 0).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), target, weight=weights.to(logits.device), ignore_index=ignore_index)


def segmentation_loss(
    outputs: Mapping[str, torch.Tensor],
    target: torch.Tensor,
    *,
    ignore_index: int = 255,
    aux_weight: float = 0.5,
    class_balance: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Cross-entropy of ``outputs["out"]`` plus ``aux_weight`` x that of ``outputs["aux"]`` if present
    (torchvision's reference segmentation recipe).

    Args:
        outputs: a segmenter's output, ``{"out": [N, C, H, W]}`` and optionally ``"aux"``.
        target: class indices ``[N, H, W]`` (integer), ``ignore_index`` where unlabelled.
        ignore_index: label excluded from the loss (255: borders, crowds, overlaps).
        aux_weight: weight of the auxiliary term (0.5).
        class_balance: weight pixels by :func:`batch_class_weights` with this power (0: plain
            average; 1: each class present in the batch weighs the same in total), against a
            large easy class (background) swamping small objects.

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
    if isinstance(class_balance, bool) or not isinstance(class_balance, (int, float)) or not 0.0 <= class_balance <= 1.0:
        raise ValueError(f"class_balance must be in [0, 1]; got {class_balance!r}")
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
        losses[f"loss_{name}"] = _cross_entropy(logits, target, ignore_index, class_balance)
    losses["loss"] = losses["loss_out"] + aux_weight * losses["loss_aux"] if "loss_aux" in losses else losses["loss_out"]
    return losses
