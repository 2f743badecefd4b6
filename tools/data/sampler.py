"""Aspect-ratio grouped batch sampling (torchvision reference behaviour), DDP- and resume-aware."""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import BatchSampler, DistributedSampler, Sampler


def aspect_ratio_group_ids(aspect_ratios: Sequence[float], k: int = 3) -> list[int]:
    """Group id per image from ``2k + 1`` log-spaced aspect-ratio (width / height) bin edges
    between 1/2 and 2 (``k = 0``: one edge at 1, i.e. portrait vs landscape)."""
    edges = [2.0 ** (i / k - 1.0) for i in range(2 * k + 1)] if k > 0 else [1.0]
    return [bisect.bisect_right(edges, float(r)) for r in aspect_ratios]


def build_train_sampler(num_samples: int, *, shuffle: bool = True, seed: int = 0) -> DistributedSampler:
    """A seeded, epoch-aware sampler over ``range(num_samples)``: this rank's shard when
    ``torch.distributed`` is initialised, all samples otherwise (``set_epoch`` reshuffles)."""
    if dist.is_available() and dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
    else:
        world, rank = 1, 0
    return DistributedSampler(
        range(num_samples), num_replicas=world, rank=rank, shuffle=shuffle, seed=seed
    )


class GroupedBatchSampler(BatchSampler):
    """Batches whose images share an aspect-ratio group.

    Indices are drawn from ``sampler`` in order and buffered per group; a batch is yielded as
    soon as a group's buffer is full. At the end, until ``len(sampler) // batch_size`` batches
    have been produced, the leftover buffers (largest first) are completed with repeated samples
    from their own group. ``set_epoch`` is forwarded to the sampler (e.g. a DistributedSampler);
    ``set_start_batch(n)`` makes the next iteration skip its first ``n`` batches, for resuming
    mid-epoch (the order is reproducible because the sampler is seeded per epoch).
    """

    def __init__(self, sampler: Sampler[int], group_ids: Sequence[int], batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.sampler = sampler
        self.group_ids = list(group_ids)
        self.batch_size = batch_size
        self.start_batch = 0

    def set_epoch(self, epoch: int) -> None:
        """Forward the epoch to the underlying sampler, if it takes one."""
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def set_start_batch(self, batch_index: int) -> None:
        """Skip the first ``batch_index`` batches of the next iteration only."""
        if batch_index < 0:
            raise ValueError(f"start batch must be >= 0, got {batch_index}")
        self.start_batch = batch_index

    def _all_batches(self) -> Iterator[list[int]]:
        buffers: dict[int, list[int]] = defaultdict(list)
        seen: dict[int, list[int]] = defaultdict(list)
        produced = 0
        for idx in self.sampler:
            group = self.group_ids[idx]
            buffers[group].append(idx)
            seen[group].append(idx)
            if len(buffers[group]) == self.batch_size:
                yield buffers[group]
                produced += 1
                buffers[group] = []
        remaining = self.num_full_batches() - produced
        if remaining <= 0:
            return
        for group, buffer in sorted(buffers.items(), key=lambda kv: len(kv[1]), reverse=True):
            if not buffer:
                continue
            need = self.batch_size - len(buffer)
            pool = seen[group]
            filler = (pool * math.ceil(need / len(pool)))[:need]
            yield buffer + filler
            remaining -= 1
            if remaining == 0:
                break

    def num_full_batches(self) -> int:
        """Batches per epoch: ``len(sampler) // batch_size``."""
        return len(self.sampler) // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        start, self.start_batch = self.start_batch, 0
        for position, batch in enumerate(self._all_batches()):
            if position >= start:
                yield batch

    def __len__(self) -> int:
        return max(self.num_full_batches() - self.start_batch, 0)


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (for DataLoader shuffling/workers)."""
    g = torch.Generator()
    g.manual_seed(seed)
    return g
