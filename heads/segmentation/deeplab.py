"""DeepLabV3 and DeepLabV3+ heads and the whole segmenters built on a feature-tap trunk."""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .aspp import ASPP
from .norm import conv_norm_act


class DeepLabV3Head(nn.Module):
    """ASPP on the deepest feature map, a 3x3 conv-BN-ReLU and a 1x1 classifier (torchvision's
    ``DeepLabHead``, with named parts)."""

    def __init__(
        self, in_channels: int, num_classes: int, atrous_rates: Sequence[int], *, channels: int = 256, dropout: float = 0.5
    ) -> None:
        super().__init__()
        self.aspp = ASPP(in_channels, atrous_rates, channels, dropout)
        self.conv = conv_norm_act(channels, channels, 3)
        self.predict = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at the resolution of ``x``."""
        return self.predict(self.conv(self.aspp(x)))


class DeepLabV3PlusHead(nn.Module):
    """DeepLabV3+ decoder (Chen et al., 2018): ASPP on the deep map, upsampled to the low-level
    (c2, stride 4) map and concatenated with a ``low_level_channels`` 1x1 projection of it, then
    two 3x3 conv-BN-ReLU and a 1x1 classifier."""

    def __init__(
        self,
        in_channels: int,
        low_level_in_channels: int,
        num_classes: int,
        atrous_rates: Sequence[int],
        *,
        channels: int = 256,
        low_level_channels: int = 48,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.aspp = ASPP(in_channels, atrous_rates, channels, dropout)
        self.low_level = conv_norm_act(low_level_in_channels, low_level_channels, 1)
        self.decoder = nn.Sequential(
            conv_norm_act(channels + low_level_channels, channels, 3),
            conv_norm_act(channels, channels, 3),
        )
        self.predict = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor, low_level: torch.Tensor) -> torch.Tensor:
        """Logits at the resolution of ``low_level``."""
        deep = F.interpolate(self.aspp(x), size=low_level.shape[-2:], mode="bilinear", align_corners=False)
        return self.predict(self.decoder(torch.cat([deep, self.low_level(low_level)], dim=1)))


# torchvision DeepLabHead (Sequential: ASPP, conv, BN, ReLU, conv) -> DeepLabV3Head names.
_TV_V3_CLASSIFIER = {"0": "aspp", "1": "conv.0", "2": "conv.1", "4": "predict"}


class DeepLabV3(nn.Module):
    """DeepLabV3 segmenter: a trunk returning ``{tap: tensor}``, :class:`DeepLabV3Head` on ``c5``
    and an optional auxiliary FCN head on ``c4``.

    ``forward(x)`` returns ``{"out": logits}`` (plus ``"aux"`` when there is an auxiliary head),
    both ``[N, num_classes, H, W]`` at the input size, as torchvision's segmentation models do.
    Submodules are named ``backbone``, ``classifier``, ``aux_classifier`` like torchvision's.
    """

    #: trunk taps the head reads (the auxiliary head adds ``c4``).
    head_taps: tuple[str, ...] = ("c5",)

    def __init__(self, backbone: nn.Module, classifier: nn.Module, aux_classifier: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier
        self.aux_classifier = aux_classifier

    def _classify(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.classifier(features["c5"])

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        size = x.shape[-2:]
        features = self.backbone(x)
        result: OrderedDict[str, torch.Tensor] = OrderedDict()
        result["out"] = F.interpolate(self._classify(features), size=size, mode="bilinear", align_corners=False)
        if self.aux_classifier is not None:
            aux = self.aux_classifier(features["c4"])
            result["aux"] = F.interpolate(aux, size=size, mode="bilinear", align_corners=False)
        return result

    def remap_torchvision_keys(self, state_dict: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
        """Rename a torchvision ``deeplabv3_resnet*`` state dict to this model's keys.

        ``backbone.*`` and ``aux_classifier.*`` already match; ``classifier.{0,1,2,4}.*`` become
        ``classifier.{aspp,conv.0,conv.1,predict}.*``. Keys already in this model's naming pass
        through unchanged.
        """
        return OrderedDict((self._remap_key(k), v) for k, v in state_dict.items())

    def _remap_key(self, key: str) -> str:
        m = re.match(r"classifier\.(\d+)\.(.+)", key)
        if m and m.group(1) in _TV_V3_CLASSIFIER:
            return f"classifier.{_TV_V3_CLASSIFIER[m.group(1)]}.{m.group(2)}"
        return key


class DeepLabV3Plus(DeepLabV3):
    """DeepLabV3+ segmenter: like :class:`DeepLabV3` with a :class:`DeepLabV3PlusHead` that also
    reads ``c2``.

    ``remap_torchvision_keys`` maps a torchvision DeepLabV3 checkpoint's trunk, ASPP and auxiliary
    head; torchvision's V3 classifier convs have no counterpart in the V3+ decoder and keep their
    names, so a strict load lists them as unexpected (load with ``strict=False`` to reuse the rest).
    """

    head_taps = ("c2", "c5")

    def _classify(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.classifier(features["c5"], features["c2"])

    def _remap_key(self, key: str) -> str:
        return re.sub(r"^classifier\.0\.", "classifier.aspp.", key)
