"""Loading torchvision model checkpoints (detectors, DeepLab) into the models this package builds."""

from __future__ import annotations

import re
from typing import Any, Mapping

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from backbones import LoadReport, load_matching, read_state_dict

# Key renames torchvision applies itself (in ``_load_from_state_dict``) to checkpoints saved before
# its heads and FPN were rebuilt on ``Conv2dNormActivation``; the published COCO v1 files use them.
_LEGACY_RENAMES: tuple[tuple[re.Pattern, Any], ...] = (
    (re.compile(r"(.*fpn\.(?:inner|layer)_blocks\.\d+)\.(weight|bias)$"), r"\1.0.\2"),
    (re.compile(r"(.*rpn\.head\.conv)\.(weight|bias)$"), r"\1.0.0.\2"),
    (
        re.compile(r"(.*head\.(?:classification|regression)_head\.conv)\.(\d+)\.(weight|bias)$"),
        lambda m: f"{m.group(1)}.{int(m.group(2)) // 2}.0.{m.group(3)}",
    ),
    (
        re.compile(r"(.*mask_head)\.mask_fcn(\d+)\.(weight|bias)$"),
        lambda m: f"{m.group(1)}.{int(m.group(2)) - 1}.0.{m.group(3)}",
    ),
)


def _modernise_keys(state: Mapping[str, torch.Tensor], model_keys: set[str]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename legacy keys the model does not have to the current names it has; return notes."""
    out: dict[str, torch.Tensor] = {}
    renamed = 0
    for key, value in state.items():
        if key not in model_keys:
            for pattern, replacement in _LEGACY_RENAMES:
                new = pattern.sub(replacement, key) if pattern.match(key) else key
                if new != key and new in model_keys and new not in state:
                    key, renamed = new, renamed + 1
                    break
        out[key] = value
    notes = [f"{renamed} keys renamed from torchvision's pre-0.13 layout (e.g. fpn.inner_blocks.N.weight)"] if renamed else []
    return out, notes


def load_torchvision_weights(
    model: nn.Module,
    source: str | Mapping[str, Any],
    *,
    strict: bool = True,
    frozen_bn_eps: float | None = None,
) -> LoadReport:
    """Load a torchvision model checkpoint into a model built by this package.

    Detectors from :func:`heads.build_detector` have torchvision's own key layout
    (``backbone.body.*``, ``backbone.fpn.*``, ``rpn.*``, ``roi_heads.*``, ``head.*``), so
    ``fasterrcnn_resnet50_fpn``, ``retinanet_resnet50_fpn``, ``fcos_resnet50_fpn``,
    ``maskrcnn_resnet50_fpn``, ``keypointrcnn_resnet50_fpn`` and the ``_v2`` ones (into a model
    built with ``version="v2"``) load key for key, old-layout files included. A model that defines
    ``remap_torchvision_keys(state_dict) -> state_dict`` (e.g. the DeepLab models, for
    ``deeplabv3_resnet50/101``) gets the checkpoint through it first.

    Args:
        model: the model to load into.
        source: a state dict or a path (or URL) of a ``.pth`` file, read with ``weights_only=True``.
        strict: raise :class:`backbones.WeightsMismatchError` (carrying the report) on missing,
            unexpected or wrongly shaped keys, before anything is loaded.
        frozen_bn_eps: if given, set the ``eps`` of every ``FrozenBatchNorm2d``; torchvision uses
            0.0 with its v1 COCO checkpoints of Faster/Mask/Keypoint R-CNN and RetinaNet.

    Returns:
        A :class:`backbones.LoadReport` (loaded, missing, unexpected, mismatched keys).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    state, name, _ = read_state_dict(source)
    remap = getattr(model, "remap_torchvision_keys", None)
    if callable(remap):
        state = remap(state)
        if not isinstance(state, Mapping):
            raise TypeError(f"{type(model).__name__}.remap_torchvision_keys must return a state dict; got {type(state).__name__}")
    state, notes = _modernise_keys(state, set(model.state_dict()))
    report = load_matching(model, state, source=name, format="torchvision", strict=strict)
    report.notes = notes + report.notes
    if frozen_bn_eps is not None:
        frozen = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
        for module in frozen:
            module.eps = float(frozen_bn_eps)
        report.notes.append(f"eps={frozen_bn_eps} set on {len(frozen)} FrozenBatchNorm2d layers")
    return report
