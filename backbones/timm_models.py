"""This package's trunks in timm's model registry, so that whatever builds its backbone with
``timm.create_model(name, features_only=True, out_indices=...)`` gets them: segmentation_models_pytorch
(``encoder_name="tu-<name>"``), Hugging Face transformers (``TimmBackbone``, DETR-family configs with
``use_timm_backbone=True``) and timm users themselves.

Call :func:`register_timm_models` once (timm stays an optional dependency); every variant of
:func:`backbones.list_backbones` is then ``backbones_<variant>`` in timm, e.g.
``timm.create_model("backbones_res2net50_26w_4s", features_only=True, out_indices=(1, 2, 3, 4),
frozen_stages=1, norm="FrozenBN", output_stride=16, weights="r2n50.pth")``. The model follows
timm's feature-extraction contract: ``forward`` returns a list of maps in ``out_indices`` order
(0 = stem at stride 2, 1..4 = stages c2..c5), and ``feature_info`` has ``channels()``,
``reduction()`` and ``module_name()``. This package's options (``frozen_stages``, ``norm``,
``output_stride``, ``dcn_stages``, ``checkpointing``, ``weights`` for a local checkpoint, ...) pass
through; an unknown option is the same ``ValueError`` as in :func:`create_backbone`.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .trunk import TAPS
from .variants import VARIANTS, UnknownBackboneError, create_backbone

PREFIX = "backbones_"
#: timm arguments this package translates, and those that must keep their no-op value here
_TIMM_RENAMES = {"in_chans": "in_channels"}
_TIMM_NEUTRAL = {"pretrained_cfg": None, "pretrained_cfg_overlay": None, "cache_dir": None, "drop_rate": 0.0,
                 "global_pool": "avg", "num_classes": 1000}


class TimmFeatures(nn.Module):
    """A trunk of this package behind timm's ``features_only`` contract (see the module docstring)."""

    def __init__(self, trunk: nn.Module, out_indices: Sequence[int]) -> None:
        super().__init__()
        from timm.models import FeatureInfo

        self.trunk = trunk
        self.out_indices = tuple(out_indices)
        by_tap = {info.name: info for info in trunk.feature_info}
        info = [{"num_chs": by_tap[tap].channels, "reduction": by_tap[tap].stride, "module": _module_of(tap),
                 "index": i} for i, tap in enumerate(TAPS[: max(self.out_indices) + 1])]
        self.feature_info = FeatureInfo(info, self.out_indices)
        #: module name -> level index of the maps ``forward`` returns, as timm's FeatureListNet has it
        #: (transformers' TimmBackbone swaps it for all levels to return hidden states)
        self.return_layers = {_module_of(TAPS[i]): str(i) for i in self.out_indices}

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = self.trunk(x)
        return [features[TAPS[int(i)]] for i in self.return_layers.values()]


def _module_of(tap: str) -> str:
    return "trunk.relu" if tap == "stem" else f"trunk.layer{TAPS.index(tap)}"


def _out_indices(value: Any) -> tuple[int, ...]:
    """timm's ``out_indices``: a tuple of indices (negative ones count from the last), or an int
    n meaning the last n levels."""
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    given = value
    if is_int(value):
        value = tuple(range(len(TAPS) - value, len(TAPS)))
    if not (isinstance(value, (tuple, list)) and all(is_int(i) for i in value)):
        value = ()
    indices = tuple(i % len(TAPS) if -len(TAPS) <= i < len(TAPS) else i for i in value)
    bad = [i for i in indices if not 0 <= i < len(TAPS)]
    if bad or not indices or list(indices) != sorted(set(indices)):
        raise ValueError(f"out_indices must be an int n (the last n levels) or increasing indices among "
                         f"0..{len(TAPS) - 1} (stem, c2..c5); got {given!r}")
    return indices


def create_timm_features(variant: str, *, pretrained: bool = False, features_only: bool = False,
                         out_indices: Any = (0, 1, 2, 3, 4), **kwargs: Any) -> TimmFeatures:
    """Build ``variant`` for ``timm.create_model`` (what the registered entrypoints call)."""
    if not features_only:
        raise ValueError(f"{PREFIX}{variant} is a feature extractor without a classifier: create it with "
                         "features_only=True (as segmentation_models_pytorch and transformers do)")
    if pretrained:
        raise ValueError(f"{PREFIX}{variant} has no hub weights: pass pretrained=False and weights=<local "
                         "checkpoint> (any format backbones.load_weights reads)")
    for name, neutral in _TIMM_NEUTRAL.items():
        value = kwargs.pop(name, neutral)
        if value != neutral and value is not None:
            raise ValueError(f"{name}={value!r} does not apply to {PREFIX}{variant} (a trunk without a classifier)")
    options = {_TIMM_RENAMES.get(k, k): v for k, v in kwargs.items()}
    indices = _out_indices(out_indices)
    trunk = create_backbone(variant, out_features=TAPS[: max(indices) + 1], **options)
    return TimmFeatures(trunk, indices)


def _entrypoint(name: str, variant: str, defaults: dict[str, Any]) -> Callable[..., TimmFeatures]:
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> TimmFeatures:
        given = {k: v for k, v in kwargs.items() if v is not None}  # callers pass None for "unset"
        return create_timm_features(variant, pretrained=pretrained, **{**defaults, **given})

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"This package's {variant} trunk (timm features_only contract), options {defaults}."
    return entrypoint


def register_timm_model(name: str, variant: str, **options: Any) -> str:
    """Register ``variant`` with timm under ``name``, with ``options`` as its defaults (arguments
    given to ``timm.create_model`` win). For frameworks whose configs name a timm model but cannot
    pass it options (transformers' DETR configs), e.g.
    ``register_timm_model("backbones_r2n50_os8_dcn", "res2net50_26w_4s", output_stride=8, dcn_stages=[4])``."""
    from timm.models import register_model

    with torch.device("meta"):  # the options checked as timm.create_model will use them, nothing allocated
        create_timm_features(variant, **{"features_only": True, **{k: v for k, v in options.items() if k != "weights"}})
    setattr(sys.modules[__name__], name, register_model(_entrypoint(name, variant, dict(options))))
    return name


def register_timm_models() -> list[str]:
    """Register every variant with timm as ``backbones_<variant>`` (idempotent); returns the names."""
    from timm.models import is_model, register_model

    names = []
    for variant in VARIANTS:
        name = PREFIX + variant
        if not is_model(name):
            setattr(sys.modules[__name__], name, register_model(_entrypoint(name, variant, {})))
        names.append(name)
    return names


def check_timm_name(name: str) -> str:
    """The variant behind a prefixed timm name; an unknown one lists the close matches."""
    variant = name.removeprefix("tu-").removeprefix(PREFIX)
    if not name.removeprefix("tu-").startswith(PREFIX) or variant not in VARIANTS:
        close = difflib.get_close_matches(name.removeprefix("tu-"), [PREFIX + v for v in VARIANTS], n=4, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownBackboneError(f"unknown model {name!r}{hint}")
    return variant
