"""Every private torchvision detection API that ``heads`` relies on, each behind one function.

As ``backbones.compat`` for the trunk: one place per private API, a fallback on public APIs where
there is one and a clear error where there is not, and a check per API in ``tests/test_compat.py``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Sequence

import torch
from torch import nn
from torchvision.ops import MultiScaleRoIAlign

try:  # the level scales and the box -> level mapper MultiScaleRoIAlign infers on its first call
    from torchvision.ops.poolers import _setup_scales
except ImportError:  # pragma: no cover
    _setup_scales = None

#: Box regression losses torchvision's RetinaNet regression head computes (its ``_box_loss``).
BOX_LOSSES = ("l1", "smooth_l1", "giou", "diou", "ciou")


def setup_scales(
    pool: MultiScaleRoIAlign, features: Sequence[torch.Tensor], image_shapes: Sequence[tuple[int, int]]
) -> tuple[list[float], Callable[[list[torch.Tensor]], torch.Tensor]]:
    """The ``(scales, map_levels)`` that ``pool`` infers from its level ``features`` (in
    ``featmap_names`` order) and the image sizes (``torchvision.ops.poolers._setup_scales``).

    Fallback: a fresh pooler of the same settings runs its public ``forward`` on no boxes, which
    leaves them in its ``scales`` and ``map_levels`` attributes.
    """
    if _setup_scales is not None:
        return _setup_scales(list(features), list(image_shapes), pool.canonical_scale, pool.canonical_level)
    probe = MultiScaleRoIAlign(
        list(pool.featmap_names), pool.output_size, pool.sampling_ratio,
        canonical_scale=pool.canonical_scale, canonical_level=pool.canonical_level,
    )
    no_boxes = [features[0].new_zeros((0, 4)) for _ in image_shapes]
    probe(OrderedDict(zip(pool.featmap_names, features)), no_boxes, list(image_shapes))
    return probe.scales, probe.map_levels


def set_box_loss(regression_head: nn.Module, loss: str) -> None:
    """Make torchvision's ``RetinaNetRegressionHead`` train with ``loss`` (``"giou"`` in the v2
    recipe), which torchvision reads from the head's private ``_loss_type``. A torchvision without
    it is an error rather than a silent L1 loss."""
    if loss not in BOX_LOSSES:
        raise ValueError(f"loss must be one of {', '.join(map(repr, BOX_LOSSES))}; got {loss!r}")
    if not hasattr(regression_head, "_loss_type"):
        import torchvision

        raise RuntimeError(
            f"torchvision {torchvision.__version__}'s {type(regression_head).__name__} has no _loss_type: "
            f"this package cannot select its {loss} box loss (the RetinaNet v2 recipe); use version='v1'"
        )
    regression_head._loss_type = loss
