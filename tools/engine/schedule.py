"""Per-iteration learning-rate schedules: linear warm-up, then step / cosine / poly / constant.

Cosine and poly decay over the planned iterations, or (``horizon: time``) over the training-time
budget ``train.time_limit_s``: progress is then the larger of the two fractions, so the decay
ends exactly when the run does on any machine ("budgeted training", Li et al., ICLR 2020).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable

import torch

from backbones_tools.config.schema import ScheduleConfig


def lr_factor_fn(
    cfg: ScheduleConfig,
    iters_per_epoch: int,
    total_iters: int,
    time_progress: Callable[[], float] | None = None,
) -> Callable[[int], float]:
    """``f(iteration) -> multiplier of the base lr``; step milestones are given in epochs.

    ``time_progress`` (for ``horizon: time``) returns the spent fraction of the time budget; the
    cosine/poly progress is then ``max(iteration / total_iters, time_progress())``.
    """
    if cfg.horizon == "time" and time_progress is None:
        raise ValueError("schedule.horizon 'time' needs the time budget (train.time_limit_s)")
    if iters_per_epoch < 1 or total_iters < 1:
        raise ValueError(f"need iters_per_epoch >= 1 and total_iters >= 1, got {iters_per_epoch}, {total_iters}")
    milestones = [m * iters_per_epoch for m in cfg.milestones]

    def main(it: int) -> float:
        if cfg.name == "constant":
            return 1.0
        if cfg.name == "step":
            return cfg.gamma ** bisect.bisect_right(milestones, it)
        progress = it / total_iters
        if cfg.horizon == "time":
            progress = max(progress, time_progress())
        progress = min(progress, 1.0)
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
    optimizer: torch.optim.Optimizer,
    cfg: ScheduleConfig,
    iters_per_epoch: int,
    total_iters: int,
    time_progress: Callable[[], float] | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` stepped once per iteration (state_dict holds the iteration count; with
    ``horizon: time`` the trainer's restored training time carries the rest of the position)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor_fn(cfg, iters_per_epoch, total_iters, time_progress)
    )
