"""Per-iteration learning-rate schedules: linear warm-up, then step / cosine / poly / constant."""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable

import torch

from tools.config.schema import ScheduleConfig


def lr_factor_fn(cfg: ScheduleConfig, iters_per_epoch: int, total_iters: int) -> Callable[[int], float]:
    """``f(iteration) -> multiplier of the base lr``; step milestones are given in epochs."""
    if iters_per_epoch < 1 or total_iters < 1:
        raise ValueError(f"need iters_per_epoch >= 1 and total_iters >= 1, got {iters_per_epoch}, {total_iters}")
    milestones = [m * iters_per_epoch for m in cfg.milestones]

    def main(it: int) -> float:
        if cfg.name == "constant":
            return 1.0
        if cfg.name == "step":
            return cfg.gamma ** bisect.bisect_right(milestones, it)
        progress = min(it / total_iters, 1.0)
        if cfg.name == "cosine":
            decay = 0.5 * (1.0 + math.cos(math.pi * progress))
        elif cfg.name == "poly":
            decay = (1.0 - progress) ** cfg.power
        else:  # pragma: no cover - schema guards the names
            raise ValueError(f"unknown schedule {cfg.name!r}")
        return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * decay

    def factor(it: int) -> float:
        f = main(it)
        if it < cfg.warmup_iters:
            alpha = it / cfg.warmup_iters
            f *= cfg.warmup_factor * (1.0 - alpha) + alpha
        return f

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, iters_per_epoch: int, total_iters: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` stepped once per iteration (state_dict holds the iteration count)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor_fn(cfg, iters_per_epoch, total_iters))
