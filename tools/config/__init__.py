"""Training configs: typed schema, YAML loading with ``_base_`` and ``--set`` overrides."""

from backbones_tools.config.loader import (
    ConfigError,
    apply_overrides,
    config_to_yaml,
    load_config,
    load_config_dict,
    parse_override,
    validate_config,
)
from backbones_tools.config.schema import DET_KINDS, SEG_KINDS, TrainConfig

__all__ = [
    "ConfigError", "DET_KINDS", "SEG_KINDS", "TrainConfig", "apply_overrides", "config_to_yaml",
    "load_config", "load_config_dict", "parse_override", "validate_config",
]
