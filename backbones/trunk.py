"""The ResNet-family trunk: one class builds every variant from a block type and stage depths."""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from functools import partial
from typing import Iterator, NamedTuple, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .blocks import BasicBlock, Bottle2neck, Bottleneck, ResidualBlock, make_shortcut
from .dcn import DeformConv3x3
from .norm import NORM_KINDS, is_batch_norm, make_norm

STAGE_TAPS = ("c2", "c3", "c4", "c5")
#: Every tap a trunk can return, shallow to deep. ``stem`` is taken before the max-pool.
TAPS = ("stem", *STAGE_TAPS)
STAGE_NAMES = ("layer1", "layer2", "layer3", "layer4")
BLOCK_TYPES = {"basic": BasicBlock, "bottleneck": Bottleneck, "bottle2neck": Bottle2neck}
STYLES = ("pytorch", "caffe")
OUTPUT_STRIDES = (32, 16, 8)


class FeatureInfo(NamedTuple):
    """One returned feature map: its tap name, channel count and stride relative to the input."""

    name: str
    channels: int
    stride: int


def _choice(option: str, value, allowed: Sequence) -> None:
    if value not in allowed:
        raise ValueError(f"{option} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


def _flag(option: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{option} must be True or False; got {value!r}")
    return value


class _KeepRunningStats(contextlib.AbstractContextManager):
    """During the recomputation of a checkpointed block, leave BN running statistics alone, so a
    checkpointed training step updates them exactly once, as an ordinary step does."""

    def __init__(self, module: nn.Module) -> None:
        self.norms = [m for m in module.modules() if is_batch_norm(m) and m.training and m.track_running_stats]
        self.saved: list[tuple[float | None, torch.Tensor | None]] = []

    def __enter__(self):
        self.saved = []
        for norm in self.norms:
            tracked = norm.num_batches_tracked.clone() if norm.num_batches_tracked is not None else None
            self.saved.append((norm.momentum, tracked))
            norm.momentum = 0.0
        return self

    def __exit__(self, *exc) -> None:
        for norm, (momentum, tracked) in zip(self.norms, self.saved):
            norm.momentum = momentum
            if tracked is not None:
                norm.num_batches_tracked.copy_(tracked)


def _recompute_contexts(block: nn.Module):
    return contextlib.nullcontext(), _KeepRunningStats(block)


class ResNet(nn.Module):
    """ResNet / ResNeXt / Wide ResNet / Res2Net trunk returning multi-scale feature maps.

    ``forward(x)`` returns an ordered dict keyed by the requested taps (``stem``, ``c2``..``c5``);
    ``feature_info`` lists ``(name, channels, stride)`` for each. Stages deeper than the deepest
    requested tap are not built. Parameter names are torchvision's (and timm's), so reference
    checkpoints load with ``load_state_dict``. Most users call :func:`backbones.create_backbone`.

    Args:
        block: ``"basic"``, ``"bottleneck"`` or ``"bottle2neck"``.
        layers: blocks per stage (four numbers).
        groups, base_width: ResNeXt cardinality and width per group (Res2Net: width per split).
        scale: Res2Net splits per block.
        deep_stem: three 3x3 convs (``stem_width``, ``stem_width``, 64 channels) instead of one 7x7.
        avg_down: average-pool then 1x1 conv in strided shortcuts instead of a strided 1x1 conv.
        style: ``"pytorch"`` (stride on the 3x3) or ``"caffe"`` (stride on the first 1x1).
        in_channels: input channels.
        out_features: taps to return, any of ``stem``, ``c2``, ``c3``, ``c4``, ``c5``.
        norm: ``"BN"``, ``"SyncBN"``, ``"GN"`` or ``"FrozenBN"``.
        norm_eval: keep BN layers in eval mode (running statistics frozen) while training.
        frozen_stages: -1 none, 0 the stem, n the stem and stages 1..n; survives ``.train()``.
        output_stride: 32, 16 or 8; later stages are dilated instead of strided.
        multi_grid: per-block dilation multipliers of the last stage (DeepLabV3), e.g. ``(1, 2, 4)``.
        checkpointing: recompute each block in the backward pass to save activation memory.
        drop_path_rate: stochastic depth rate of the last block, decayed linearly to 0 at the first.
        zero_init_residual: zero the last norm scale of every residual branch.
        dcn_stages: stages (1-4) whose 3x3 convs are deformable (offsets start at zero).
    """

    def __init__(
        self,
        block: str,
        layers: Sequence[int],
        *,
        groups: int = 1,
        base_width: int = 64,
        scale: int = 4,
        deep_stem: bool = False,
        stem_width: int = 32,
        avg_down: bool = False,
        style: str = "pytorch",
        in_channels: int = 3,
        out_features: Sequence[str] = STAGE_TAPS,
        norm: str = "BN",
        norm_eval: bool = False,
        frozen_stages: int = -1,
        output_stride: int = 32,
        multi_grid: Sequence[int] | None = None,
        checkpointing: bool = False,
        drop_path_rate: float = 0.0,
        zero_init_residual: bool = False,
        dcn_stages: Sequence[int] = (),
    ) -> None:
        super().__init__()
        _choice("block", block, tuple(BLOCK_TYPES))
        if len(layers) != 4 or any(not isinstance(n, int) or n < 1 for n in layers):
            raise ValueError(f"layers must be four positive block counts; got {layers!r}")
        _choice("style", style, STYLES)
        _choice("norm", norm, NORM_KINDS)
        _choice("output_stride", output_stride, OUTPUT_STRIDES)
        if not isinstance(in_channels, int) or isinstance(in_channels, bool) or in_channels < 1:
            raise ValueError(f"in_channels must be a positive integer; got {in_channels!r}")
        if not isinstance(drop_path_rate, (int, float)) or not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be a number in [0, 1); got {drop_path_rate!r}")
        self.out_features = self._validate_taps(out_features)
        num_stages = max(STAGE_TAPS.index(t) + 1 if t in STAGE_TAPS else 0 for t in self.out_features)
        if not isinstance(frozen_stages, int) or isinstance(frozen_stages, bool) or not -1 <= frozen_stages <= num_stages:
            raise ValueError(
                f"frozen_stages must be an integer from -1 (nothing frozen) to {num_stages} "
                f"(the deepest built stage for out_features={self.out_features}); got {frozen_stages!r}"
            )
        block_cls = BLOCK_TYPES[block]
        if style == "caffe" and block_cls is not Bottleneck:
            raise ValueError(
                f"style='caffe' moves the stride to the first 1x1 conv of a Bottleneck; "
                f"{block!r} blocks have no such conv, so only style='pytorch' applies"
            )
        dcn_stages = tuple(dcn_stages)
        if any(s not in (1, 2, 3, 4) for s in dcn_stages):
            raise ValueError(f"dcn_stages must hold stage numbers from 1 to 4; got {dcn_stages!r}")
        if dcn_stages and block_cls is BasicBlock:
            raise ValueError("dcn_stages needs bottleneck blocks (ResNet-50 and deeper, ResNeXt, Res2Net)")
        if multi_grid is not None:
            multi_grid = tuple(multi_grid)
            if num_stages < 4:
                raise ValueError("multi_grid dilates the last stage, which is only built when 'c5' is requested")
            if len(multi_grid) != layers[3] or any(not isinstance(m, int) or m < 1 for m in multi_grid):
                raise ValueError(
                    f"multi_grid must give one positive integer per block of the last stage "
                    f"({layers[3]} blocks); got {multi_grid!r}"
                )

        self.in_channels = in_channels
        self.frozen_stages = frozen_stages
        self.norm_eval = _flag("norm_eval", norm_eval)
        self.checkpointing = _flag("checkpointing", checkpointing)
        norm_layer = partial(make_norm, norm)

        if _flag("deep_stem", deep_stem):
            self.conv1 = nn.Sequential(
                nn.Conv2d(in_channels, stem_width, 3, stride=2, padding=1, bias=False),
                norm_layer(stem_width),
                nn.ReLU(inplace=True),
                nn.Conv2d(stem_width, stem_width, 3, stride=1, padding=1, bias=False),
                norm_layer(stem_width),
                nn.ReLU(inplace=True),
                nn.Conv2d(stem_width, 64, 3, stride=1, padding=1, bias=False),
            )
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(64)
        self.relu = nn.ReLU(inplace=True)
        if num_stages:
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        block_args: dict = {}
        if block_cls is not BasicBlock:
            block_args = dict(groups=groups, base_width=base_width)
        if block_cls is Bottleneck:
            block_args["style"] = style
        if block_cls is Bottle2neck:
            block_args["scale"] = scale

        info = {"stem": FeatureInfo("stem", 64, 2)}
        channels, net_stride, dilation, prev_dilation = 64, 4, 1, 1
        total_blocks, block_index = sum(layers), 0
        _flag("avg_down", avg_down)
        for stage in range(num_stages):
            planes = 64 * 2**stage
            stride = 1 if stage == 0 else 2
            if net_stride >= output_stride:
                dilation, stride = dilation * stride, 1
            else:
                net_stride *= stride
            out_channels = planes * block_cls.expansion
            downsample = None
            if stride != 1 or channels != out_channels:
                downsample = make_shortcut(
                    channels, out_channels, stride=stride, dilation=dilation, avg_down=avg_down, norm=norm_layer
                )
            blocks = []
            for i in range(layers[stage]):
                block_dilation, first_dilation = dilation, prev_dilation
                if multi_grid is not None and stage == 3:
                    block_dilation = first_dilation = dilation * multi_grid[i]
                extra = dict(deformable=True) if stage + 1 in dcn_stages else {}
                blocks.append(
                    block_cls(
                        channels,
                        planes,
                        stride=stride if i == 0 else 1,
                        dilation=block_dilation,
                        first_dilation=first_dilation,
                        downsample=downsample if i == 0 else None,
                        norm=norm_layer,
                        drop_path=drop_path_rate * block_index / max(total_blocks - 1, 1),
                        **block_args,
                        **extra,
                    )
                )
                prev_dilation, channels = dilation, out_channels
                block_index += 1
            self.add_module(STAGE_NAMES[stage], nn.Sequential(*blocks))
            info[STAGE_TAPS[stage]] = FeatureInfo(STAGE_TAPS[stage], channels, net_stride)
        self.stage_names = STAGE_NAMES[:num_stages]
        self.feature_info = [info[t] for t in self.out_features]

        self._init_weights(_flag("zero_init_residual", zero_init_residual))
        self._apply_freezing()

    @staticmethod
    def _validate_taps(out_features: Sequence[str]) -> tuple[str, ...]:
        if isinstance(out_features, str):
            out_features = (out_features,)
        requested = tuple(out_features)
        unknown = [t for t in requested if t not in TAPS]
        if unknown or not requested or len(set(requested)) != len(requested):
            raise ValueError(
                f"out_features must be a non-empty list of distinct taps among {', '.join(TAPS)}; got {requested!r}"
            )
        return tuple(t for t in TAPS if t in requested)

    def _init_weights(self, zero_init_residual: bool) -> None:
        offset_predictors = {m.conv_offset for m in self.modules() if isinstance(m, DeformConv3x3)}
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, DeformConv3x3)) and m not in offset_predictors:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, ResidualBlock):
                    m.zero_init_last()

    # ----------------------------------------------------------------------------------- freezing
    def _frozen_modules(self) -> Iterator[nn.Module]:
        if self.frozen_stages >= 0:
            yield self.conv1
            yield self.bn1
        for name in self.stage_names[: max(self.frozen_stages, 0)]:
            yield getattr(self, name)

    def _apply_freezing(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)

    def freeze(self, frozen_stages: int) -> "ResNet":
        """Freeze the stem (0) or the stem and stages 1..n: no gradients, norm layers in eval mode."""
        if not isinstance(frozen_stages, int) or not -1 <= frozen_stages <= len(self.stage_names):
            raise ValueError(f"frozen_stages must be an integer from -1 to {len(self.stage_names)}; got {frozen_stages!r}")
        self.unfreeze()
        self.frozen_stages = frozen_stages
        self._apply_freezing()
        return self

    def unfreeze(self) -> "ResNet":
        """Make every parameter trainable again and restore the modules' train/eval mode."""
        self.frozen_stages = -1
        for p in self.parameters():
            p.requires_grad_(True)
        return self.train(self.training)

    def train(self, mode: bool = True) -> "ResNet":
        super().train(mode)
        self._apply_freezing()
        if mode and self.norm_eval:
            for m in self.modules():
                if is_batch_norm(m):
                    m.eval()
        return self

    # ------------------------------------------------------------------------------------ forward
    def _run_stage(self, stage: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        if not (self.checkpointing and self.training and torch.is_grad_enabled()):
            return stage(x)
        for block in stage:
            x = checkpoint(block, x, use_reentrant=False, context_fn=partial(_recompute_contexts, block))
        return x

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        if x.dim() != 4:
            raise ValueError(f"expected a 4-D (N, C, H, W) input; got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels; got shape {tuple(x.shape)}")
        features: OrderedDict[str, torch.Tensor] = OrderedDict()
        x = self.relu(self.bn1(self.conv1(x)))
        if "stem" in self.out_features:
            features["stem"] = x
        if self.stage_names:
            x = self.maxpool(x)
            for name, tap in zip(self.stage_names, STAGE_TAPS):
                x = self._run_stage(getattr(self, name), x)
                if tap in self.out_features:
                    features[tap] = x
        return features
