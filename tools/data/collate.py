"""Collate functions for detection (lists) and semantic segmentation (padded tensors)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from backbones_tools.data.transforms import IGNORE_INDEX


def collate_detection(batch: Sequence[tuple[Any, ...]]) -> tuple[list[Any], ...]:
    """``[(img, target), ...]`` -> ``([img, ...], [target, ...])`` as torchvision detectors take."""
    return tuple(list(items) for items in zip(*batch))


def collate_segmentation(
    batch: Sequence[tuple[torch.Tensor, torch.Tensor]], ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``(image [3, H, W], mask [H, W])`` pairs, padding to the largest size (image with
    0 at the bottom/right, mask with ``ignore_index``)."""
    h = max(img.shape[-2] for img, _ in batch)
    w = max(img.shape[-1] for img, _ in batch)
    images = batch[0][0].new_zeros((len(batch), batch[0][0].shape[0], h, w))
    masks = torch.full((len(batch), h, w), ignore_index, dtype=torch.int64)
    for i, (img, mask) in enumerate(batch):
        images[i, :, : img.shape[-2], : img.shape[-1]] = img
        masks[i, : mask.shape[-2], : mask.shape[-1]] = mask
    return images, masks
