"""Normalisation layers selectable by name: ``BN``, ``SyncBN``, ``GN`` and ``FrozenBN``."""

from __future__ import annotations

from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from .compat import BATCH_NORM_TYPES

NORM_KINDS = ("BN", "SyncBN", "GN", "FrozenBN")

#: Groups used by ``GN`` (Wu & He, 2018). Widths not divisible by it use their largest divisor below it.
DEFAULT_GN_GROUPS = 32


def gn_groups_for(channels: int, max_groups: int = DEFAULT_GN_GROUPS) -> int:
    """Largest group count ``<= max_groups`` dividing ``channels`` (Res2Net's 26-wide splits need it)."""
    for groups in range(min(max_groups, channels), 0, -1):
        if channels % groups == 0:
            return groups
    return 1


def make_norm(kind: str, channels: int) -> nn.Module:
    """Build the normalisation layer ``kind`` for ``channels`` feature maps."""
    if kind == "BN":
        return nn.BatchNorm2d(channels)
    if kind == "SyncBN":
        return nn.SyncBatchNorm(channels)
    if kind == "FrozenBN":
        return FrozenBatchNorm2d(channels)
    if kind == "GN":
        return nn.GroupNorm(gn_groups_for(channels), channels)
    raise ValueError(f"norm must be one of {', '.join(map(repr, NORM_KINDS))}; got {kind!r}")


def is_batch_norm(module: nn.Module) -> bool:
    """True for layers that keep running statistics updated in training mode (BN and SyncBN)."""
    return isinstance(module, BATCH_NORM_TYPES)

