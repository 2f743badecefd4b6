"""Aspect-ratio grouped batch sampler and collate."""

from __future__ import annotations

import torch
from backbones_tools.data import GroupedBatchSampler, aspect_ratio_group_ids, build_train_sampler, collate_detection
from torch.utils.data import DistributedSampler, SequentialSampler


def test_group_ids_follow_torchvision_bins():
    # edges for k=3: 2**(-1, -2/3, -1/3, 0, 1/3, 2/3, 1)
    assert aspect_ratio_group_ids([0.4, 0.6, 0.99, 1.0, 1.25, 1.9, 3.0]) == [0, 1, 3, 4, 4, 6, 7]
    assert aspect_ratio_group_ids([0.5, 1.5], k=0) == [0, 1]


def test_batches_stay_in_group_and_leftovers_are_filled():
    groups = [0, 1] * 5 + [0] * 3  # 8 in group 0, 5 in group 1
    sampler = GroupedBatchSampler(SequentialSampler(range(13)), groups, batch_size=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 13 // 3
    for b in batches:
        assert len(b) == 3 and len({groups[i] for i in b}) == 1
    # first full batches come in sampler order
    assert batches[0] == [0, 2, 4] and batches[1] == [1, 3, 5]
    used = {i for b in batches for i in b}
    assert len(used) >= 11


def test_resume_from_batch_and_epochs():
    groups = aspect_ratio_group_ids([1.0 if i % 3 else 0.5 for i in range(40)])
    base = DistributedSampler(range(40), num_replicas=1, rank=0, shuffle=True, seed=3)
    sampler = GroupedBatchSampler(base, groups, batch_size=4)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.set_epoch(2)
    sampler.set_start_batch(3)
    assert len(sampler) == len(full) - 3
    assert list(sampler) == full[3:]
    assert list(sampler) == full  # the skip applies to one iteration only
    sampler.set_epoch(3)
    assert list(sampler) != full


def test_ddp_shards_are_disjoint():
    groups = [0] * 32
    shards = []
    for rank in range(2):
        base = DistributedSampler(range(32), num_replicas=2, rank=rank, shuffle=True, seed=0)
        shards.append({i for b in GroupedBatchSampler(base, groups, 4) for i in b})
    assert not shards[0] & shards[1] and len(shards[0] | shards[1]) == 32
    assert len(build_train_sampler(10)) == 10  # single process: all samples


def test_collate_detection_is_tuple_of_lists():
    batch = [(torch.zeros(3, 2, 2), {"a": 1}), (torch.ones(3, 4, 4), {"a": 2})]
    images, targets = collate_detection(batch)
    assert isinstance(images, list) and len(images) == 2 and targets[1]["a"] == 2
