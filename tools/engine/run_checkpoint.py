"""What every tool that rebuilds a training run's model reads from its checkpoint: the config
(saved, or a YAML given instead, with ``--set`` overrides), the category map and the weights.
Each fault is a :class:`CheckpointError` naming the file (exit code 2 at the command line)."""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from backbones_tools.config.loader import apply_overrides, load_config, validate_config
from backbones_tools.config.schema import TrainConfig
from backbones_tools.data import CategoryMap
from backbones_tools.engine.checkpoint import CheckpointError


def checkpoint_config(checkpoint: str | os.PathLike[str], state: Mapping[str, Any], config: str | None = None,
                      overrides: Sequence[str] = ()) -> TrainConfig:
    """``config`` (a YAML path) when given, else the config saved in the checkpoint, with
    ``overrides`` (``key=value``) applied."""
    if config:
        return load_config(config, overrides)
    if not isinstance(state.get("config"), Mapping):
        raise CheckpointError(f"{checkpoint} holds no config; pass one with --config")
    data = apply_overrides(copy.deepcopy(dict(state["config"])), overrides)
    return validate_config(data, source=f"config saved in {checkpoint}" + (" + --set" if overrides else ""))


def saved_category_map(checkpoint: str | os.PathLike[str], state: Mapping[str, Any]) -> CategoryMap | None:
    """The checkpoint's category map (labels -> category ids), None when it holds none."""
    if "category_map" not in state:
        return None
    try:
        return CategoryMap.from_dict(state["category_map"])
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise CheckpointError(f"{checkpoint}: unreadable category map ({exc})") from None


def load_run_weights(model: nn.Module, state: Mapping[str, Any], checkpoint: str | os.PathLike[str],
                     config: str | None = None) -> None:
    """Load the checkpoint's ``model`` weights strictly; a mismatch names the file and the config."""
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError, AttributeError) as exc:
        detail = " ".join(line.strip() for line in str(exc).strip().splitlines()[:3])
        built_by = f"--config {config}" if config else "its saved config"
        raise CheckpointError(f"the weights in {checkpoint} do not fit the model of {built_by}: {detail}") from None
