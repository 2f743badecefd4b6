"""Minimal torch.distributed helpers that degrade to no-ops in a single process.

torch is not imported here: a process that never loaded torch has no process group, so the
results-only evaluation (``tools/eval_coco.py --results``) starts without it.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def _dist() -> Any:
    torch = sys.modules.get("torch")
    return getattr(torch, "distributed", None) if torch is not None else None


def is_distributed() -> bool:
    """True when a default process group is initialised with more than one rank."""
    dist = _dist()
    return dist is not None and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order (``[obj]`` outside DDP)."""
    if not is_distributed():
        return [obj]
    dist = _dist()
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (no-op outside DDP) and return it.

    With the NCCL backend the tensor is moved to the current CUDA device for the reduction.
    """
    if not is_distributed():
        return tensor
    dist = _dist()
    if dist.get_backend() == "nccl" and not tensor.is_cuda:
        work = tensor.cuda()
        dist.all_reduce(work, op=dist.ReduceOp.SUM)
        tensor.copy_(work.cpu())
    else:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
