"""Dataset location, the embedded shapes default, per-sample seeded augmentation and loaders."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from backbones_tools.config.loader import ConfigError
from backbones_tools.config.schema import DataConfig
from backbones_tools.data import (
    GroupedBatchSampler,
    aspect_ratio_group_ids,
    build_train_sampler,
    make_shapes_dataset,
    seeded_generator,
)
from backbones_tools.distributed import DistContext, barrier


class DataRootError(ValueError):
    """The dataset folder is missing or lacks the COCO layout."""


@dataclass(frozen=True)
class CocoSplit:
    """Image folder and annotation file of one split."""

    images: Path
    annotations: Path


def split_paths(root: Path, split: str) -> CocoSplit:
    """``<root>/<split>/`` and ``<root>/annotations/instances_<split>.json``."""
    return CocoSplit(root / split, root / "annotations" / f"instances_{split}.json")


def prepare_data_root(cfg: DataConfig, ctx: DistContext, splits: Sequence[str]) -> Path:
    """Return the dataset root, generating the shapes dataset first when configured to.

    Generation runs on rank 0 while the other ranks wait; it is cached (a complete dataset with
    the same parameters is reused at once). A missing root or split is a :class:`DataRootError`
    naming the expected files.
    """
    root = Path(cfg.root).expanduser()
    if cfg.generate_shapes:
        if ctx.is_main:
            s = cfg.shapes
            make_shapes_dataset(
                root, s.num_train, s.num_val, s.seed, image_size=s.image_size,
                min_object_size=s.min_object_size, max_object_size=s.max_object_size,
                max_objects=s.max_objects,
            )
        barrier()
    if not root.is_dir():
        raise DataRootError(
            f"data root {str(root)!r} does not exist; point data.root (or --data-root) at a COCO-layout "
            f"folder with annotations/instances_<split>.json and <split>/ image folders"
        )
    for split in splits:
        paths = split_paths(root, split)
        missing = [str(p) for p in (paths.annotations, paths.images) if not p.exists()]
        if missing:
            raise DataRootError(
                f"data root {str(root)!r} lacks split {split!r}: missing {', '.join(missing)}"
            )
    return root


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 31-bit seed unique to ``(seed, epoch, index)``, identical in every process."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


class SeededAugmentation(Dataset):
    """Re-seeds the wrapped dataset's albumentations pipeline per sample from
    ``(seed, epoch, index)``, so augmentation does not depend on worker count, rank or where a
    resumed run restarts. Set :attr:`epoch` before creating each epoch's iterator."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        pipeline = getattr(getattr(self.dataset, "transforms", None), "pipeline", None)
        if pipeline is not None and hasattr(pipeline, "set_random_seed"):
            pipeline.set_random_seed(sample_seed(self.seed, self.epoch, index))
        return self.dataset[index]

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


class ShardSampler(Sampler[int]):
    """Evaluation sharding without padding: rank ``r`` of ``w`` takes indices ``r, r + w, ...``,
    so every image is evaluated exactly once over all ranks."""

    def __init__(self, num_samples: int, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, num_samples, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _worker_init(worker_id: int) -> None:
    torch.set_num_threads(1)


def build_train_loader(
    dataset: SeededAugmentation,
    cfg: DataConfig,
    ctx: DistContext,
    collate_fn: Callable,
    seed: int,
    aspect_ratios: Sequence[float] | None,
) -> tuple[DataLoader, GroupedBatchSampler]:
    """Seeded distributed sampler + (aspect-ratio grouped) batch sampler over this rank's share.

    ``data.batch_size`` counts images over all processes; each rank takes an equal part.
    """
    if cfg.batch_size % ctx.world_size:
        raise ConfigError(
            f"data.batch_size={cfg.batch_size} (images per iteration over all processes) is not "
            f"divisible by the {ctx.world_size} processes"
        )
    per_rank = cfg.batch_size // ctx.world_size
    sampler = build_train_sampler(len(dataset), shuffle=True, seed=seed)
    if cfg.aspect_ratio_grouping and aspect_ratios is not None:
        groups = aspect_ratio_group_ids(aspect_ratios, cfg.group_factor)
    else:
        groups = [0] * len(dataset)
    batch_sampler = GroupedBatchSampler(sampler, groups, per_rank)
    if batch_sampler.num_full_batches() < 1:
        raise ConfigError(
            f"{len(dataset)} training images give no full batch of {per_rank} per process; "
            "lower data.batch_size"
        )
    loader = DataLoader(
        dataset, batch_sampler=batch_sampler, collate_fn=collate_fn, num_workers=cfg.num_workers,
        worker_init_fn=_worker_init if cfg.num_workers else None, persistent_workers=False,
        # its own generator: creating an iterator must not draw from the global torch RNG, which
        # the model's samplers use (a resumed run would otherwise drift from an unbroken one)
        generator=seeded_generator(seed + ctx.rank),
    )
    return loader, batch_sampler


def build_eval_loader(dataset: Dataset, cfg: DataConfig, ctx: DistContext, collate_fn: Callable) -> DataLoader:
    """Unshuffled loader over this rank's shard (see :class:`ShardSampler`)."""
    sampler = ShardSampler(len(dataset), ctx.rank, ctx.world_size)  # type: ignore[arg-type]
    return DataLoader(
        dataset, batch_size=cfg.eval_batch_size, sampler=sampler, collate_fn=collate_fn,
        num_workers=min(cfg.num_workers, 2), worker_init_fn=_worker_init if cfg.num_workers else None,
        generator=seeded_generator(ctx.rank),
    )


def subset_ids(dataset: Any, limit: int | None) -> None:
    """Keep only the first ``limit`` images of a COCO dataset (debug runs)."""
    if limit is not None:
        dataset.ids = dataset.ids[:limit]
