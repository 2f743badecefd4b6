"""Renaming of foreign checkpoint keys to this package's (= torchvision's / timm's) names.

Supported: detectron2 (``stem.conv1``, ``res2.0.conv1.norm``, ``shortcut``; detector checkpoints
under ``backbone.bottom_up.``), its caffe2 ImageNet ``.pkl`` naming (``res2_0_branch2a_w``),
MMDetection (``backbone.`` prefix, ``stem.N`` deep stem) and torchvision detectors
(``backbone.body.``). torchvision, timm and the official Res2Net release need no renaming.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, Mapping

import torch

NATIVE_FORMATS = ("torchvision", "timm", "res2net")
FORMATS = ("auto", *NATIVE_FORMATS, "detectron2", "caffe2", "mmdet", "torchvision_detector")

StateDict = dict[str, torch.Tensor]


def detect_format(keys: Iterable[str]) -> str:
    """Guess the naming scheme of a checkpoint from its keys."""
    keys = list(keys)
    if any(k.startswith("backbone.body.") for k in keys):
        return "torchvision_detector"
    if any(k.startswith(("stem.conv1", "backbone.bottom_up.")) or re.match(r"(backbone\.)?res[2-5]\.\d+\.", k) for k in keys):
        return "detectron2"
    if any(k in ("conv1_w", "res_conv1_bn_s") or re.match(r"res[2-5]_\d+_branch", k) for k in keys):
        return "caffe2"
    if any(k.startswith(("backbone.", "stem.0.")) for k in keys):
        return "mmdet"
    return "torchvision"


def _take_prefixed(state: Mapping[str, torch.Tensor], prefix: str) -> tuple[StateDict, list[str]]:
    """Keys under ``prefix`` (prefix removed), and the names of the other keys (not backbone)."""
    kept = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    dropped = [k for k in state if not k.startswith(prefix)]
    return kept, dropped


def _rename(state: Mapping[str, torch.Tensor], rename: Callable[[str], str]) -> StateDict:
    return {rename(k): v for k, v in state.items()}


def _stem_names(model_keys: set[str]) -> dict[int, str]:
    """Our names for the stem's convs (index 1..3) and norms (index -1..-3)."""
    if "conv1.0.weight" in model_keys:
        return {1: "conv1.0", 2: "conv1.3", 3: "conv1.6", -1: "conv1.1", -2: "conv1.4", -3: "bn1"}
    return {1: "conv1", -1: "bn1"}


def _shortcut_names(model_keys: set[str], block: str) -> tuple[str, str]:
    """Our names for a block's shortcut conv and norm (``avg_down`` shifts them by the pool)."""
    if f"{block}.downsample.2.weight" in model_keys:
        return f"{block}.downsample.1", f"{block}.downsample.2"
    return f"{block}.downsample.0", f"{block}.downsample.1"


def _from_detectron2(state: Mapping[str, torch.Tensor], model_keys: set[str]) -> tuple[StateDict, list[str]]:
    dropped: list[str] = []
    for prefix in ("backbone.bottom_up.", "backbone."):
        if any(k.startswith(prefix) for k in state):
            state, dropped = _take_prefixed(state, prefix)
            break
    stem = _stem_names(model_keys)

    def rename(key: str) -> str:
        m = re.fullmatch(r"stem\.conv(\d)(\.norm)?\.(\w+)", key)
        if m and int(m.group(1)) in stem:
            index = int(m.group(1)) * (-1 if m.group(2) else 1)
            return f"{stem[index]}.{m.group(3)}"
        m = re.fullmatch(r"res(\d)\.(\d+)\.(conv\d|shortcut|conv2_offset)(\.norm)?\.(\w+)", key)
        if not m:
            return key
        block = f"layer{int(m.group(1)) - 1}.{m.group(2)}"
        layer, is_norm, leaf = m.group(3), m.group(4), m.group(5)
        if layer == "conv2_offset":
            return f"{block}.conv2.conv_offset.{leaf}"
        if layer == "shortcut":
            conv, norm = _shortcut_names(model_keys, block)
            return f"{norm if is_norm else conv}.{leaf}"
        return f"{block}.{'bn' + layer[-1] if is_norm else layer}.{leaf}"

    return _rename(state, rename), dropped


_CAFFE2_LEAF = {"w": "weight", "b": "bias", "s": "weight", "rm": "running_mean", "riv": "running_var"}


def _from_caffe2(state: Mapping[str, torch.Tensor], model_keys: set[str]) -> tuple[StateDict, list[str]]:
    def rename(key: str) -> str:
        m = re.fullmatch(r"conv1_(w|b)", key)
        if m:
            return f"conv1.{_CAFFE2_LEAF[m.group(1)]}"
        m = re.fullmatch(r"res_conv1_bn_(s|b|rm|riv)", key)
        if m:
            return f"bn1.{_CAFFE2_LEAF[m.group(1)]}"
        m = re.fullmatch(r"res(\d)_(\d+)_branch(1|2a|2b|2c)(_bn)?_(w|s|b|rm|riv)", key)
        if not m:
            return key
        block = f"layer{int(m.group(1)) - 1}.{m.group(2)}"
        branch, is_norm, leaf = m.group(3), m.group(4), _CAFFE2_LEAF[m.group(5)]
        if branch == "1":
            conv, norm = _shortcut_names(model_keys, block)
            return f"{norm if is_norm else conv}.{leaf}"
        index = "abc".index(branch[1]) + 1
        return f"{block}.{'bn' if is_norm else 'conv'}{index}.{leaf}"

    return _rename(state, rename), []


_MMDET_STEM = {"0": "conv1.0", "1": "conv1.1", "3": "conv1.3", "4": "conv1.4", "6": "conv1.6", "7": "bn1"}


def _from_mmdet(state: Mapping[str, torch.Tensor], model_keys: set[str]) -> tuple[StateDict, list[str]]:
    dropped: list[str] = []
    if any(k.startswith("backbone.") for k in state):
        state, dropped = _take_prefixed(state, "backbone.")

    def rename(key: str) -> str:
        m = re.fullmatch(r"stem\.(\d)\.(\w+)", key)
        return f"{_MMDET_STEM[m.group(1)]}.{m.group(2)}" if m and m.group(1) in _MMDET_STEM else key

    return _rename(state, rename), dropped


def to_native(
    state: Mapping[str, torch.Tensor], fmt: str, model_keys: set[str]
) -> tuple[StateDict, list[str]]:
    """Rename ``state`` from naming scheme ``fmt`` to ours.

    Returns the renamed state dict and the original names of keys dropped because they belong to
    another part of a whole-detector checkpoint (neck, heads).
    """
    if fmt in NATIVE_FORMATS:
        return dict(state), []
    if fmt == "torchvision_detector":
        return _take_prefixed(state, "backbone.body.")
    if fmt == "detectron2":
        return _from_detectron2(state, model_keys)
    if fmt == "caffe2":
        return _from_caffe2(state, model_keys)
    if fmt == "mmdet":
        return _from_mmdet(state, model_keys)
    raise ValueError(f"format must be one of {', '.join(map(repr, FORMATS))}; got {fmt!r}")
