"""Process-group setup for ``torchrun`` (NCCL on GPUs, Gloo on CPU) and the collectives the tools
use, each a no-op in a single process.

A plain ``python tools/train_det.py`` run has no ``WORLD_SIZE`` in its environment and stays a
single process without a process group; under ``torchrun`` the environment gives rank, world size
and local rank, and :func:`init_distributed` joins the group.

torch is imported lazily: a process that never loaded torch has no process group, so results-only
evaluation (``tools/eval_coco.py --results``) uses these helpers without importing it.
"""

from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def _cpu() -> torch.device:
    import torch

    return torch.device("cpu")


@dataclass(frozen=True)
class DistContext:
    """Where this process runs: rank, world size, local rank and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=_cpu)

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the process that logs and writes checkpoints)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when more than one process trains."""
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` picks CUDA when available; ``"cuda"`` without a GPU is an error."""
    import torch
    from backbones_tools.config.loader import ConfigError

    if preference not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {preference!r}")
    if preference == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but no CUDA device is available; use auto or cpu")
    if preference == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def init_distributed(device_preference: str = "auto", timeout_s: float = 1800.0) -> DistContext:
    """Join the torchrun process group if the environment names one (idempotent)."""
    import torch
    import torch.distributed as dist

    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    device = resolve_device(device_preference, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(
            backend=backend, timeout=datetime.timedelta(seconds=timeout_s),
            **({"device_id": device} if device.type == "cuda" else {}),
        )
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def _dist() -> Any:
    """``torch.distributed`` when torch is loaded and has it, else None."""
    torch = sys.modules.get("torch")
    dist = getattr(torch, "distributed", None) if torch is not None else None
    return dist if dist is not None and dist.is_available() else None


def cleanup_distributed() -> None:
    """Leave the process group (no-op without one)."""
    dist = _dist()
    if dist is not None and dist.is_initialized():
        dist.destroy_process_group()


def is_initialized() -> bool:
    """True when a process group with more than one rank is active."""
    dist = _dist()
    return dist is not None and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank in the active process group (0 without one)."""
    return _dist().get_rank() if is_initialized() else 0


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if is_initialized():
        _dist().barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (``obj`` itself in one process)."""
    if not is_initialized():
        return obj
    box = [obj]
    _dist().broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order (``[obj]`` in one process)."""
    if not is_initialized():
        return [obj]
    dist = _dist()
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def any_rank_true(flag: bool, device: torch.device) -> bool:
    """True if ``flag`` is true on any rank."""
    if not is_initialized():
        return bool(flag)
    import torch

    dist = _dist()
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average a dict of floats over ranks (same keys on every rank)."""
    if not is_initialized() or not values:
        return values
    import torch

    dist = _dist()
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], device=device, dtype=torch.float64)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (no-op in one process) and return it.

    With the NCCL backend the tensor is moved to the current CUDA device for the reduction.
    """
    if not is_initialized():
        return tensor
    dist = _dist()
    if dist.get_backend() == "nccl" and not tensor.is_cuda:
        work = tensor.cuda()
        dist.all_reduce(work, op=dist.ReduceOp.SUM)
        tensor.copy_(work.cpu())
    else:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
