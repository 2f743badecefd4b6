"""Training engine shared by the detection and segmentation tools (loop, optimisers, schedules,
checkpoints, metrics, DDP helpers, task adapters, checkpoint evaluation)."""

from backbones_tools.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from backbones_tools.engine.data import DataRootError
from backbones_tools.engine.optim import build_optimizer, parameter_groups, scaled_lr
from backbones_tools.engine.schedule import build_scheduler, lr_factor_fn
from backbones_tools.engine.trainer import NonFiniteLossError, RunResult, Trainer, train

__all__ = [
    "CheckpointError", "DataRootError", "EvalOutcome", "NonFiniteLossError", "RunResult", "Trainer",
    "build_optimizer", "build_scheduler", "evaluate_checkpoint", "load_checkpoint", "lr_factor_fn",
    "parameter_groups", "save_checkpoint", "scaled_lr", "train",
]


def __getattr__(name: str):
    # lazy, so that ``python -m backbones_tools.engine.evaluate`` does not import the module twice
    if name in ("EvalOutcome", "evaluate_checkpoint"):
        from backbones_tools.engine import evaluate

        return getattr(evaluate, name)
    raise AttributeError(f"module 'backbones_tools.engine' has no attribute {name!r}")
