"""The ResNet-family trunk: one class builds every variant from a block type and stage depths.

Building is split as in timm (``make_blocks``) and torchvision (``_make_layer``): options are
checked by :func:`check_trunk_options`, the stem is :func:`make_stem`, and :func:`make_stages`
builds the stages together with the ``FeatureInfo`` of each; ``ResNet`` puts them together and
runs them.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from functools import partial
from typing import Any, Iterator, NamedTuple, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .blocks import BasicBlock, Bottle2neck, Bottleneck, NormFactory, ResidualBlock, make_shortcut
from .dcn import DeformConv3x3
from .norm import NORM_KINDS, is_batch_norm, make_norm

STAGE_TAPS = ("c2", "c3", "c4", "c5")
#: Every tap a trunk can return, shallow to deep. ``stem`` is taken before the max-pool.
TAPS = ("stem", *STAGE_TAPS)
STAGE_NAMES = ("layer1", "layer2", "layer3", "layer4")
BLOCK_TYPES = {"basic": BasicBlock, "bottleneck": Bottleneck, "bottle2neck": Bottle2neck}
STYLES = ("pytorch", "caffe")
OUTPUT_STRIDES = (32, 16, 8)
#: Channels and stride of the stem's output (the input of ``layer1`` after the max-pool: stride 4).
STEM_CHANNELS, STEM_STRIDE = 64, 2


class FeatureInfo(NamedTuple):
    """One returned feature map: its tap name, channel count and stride relative to the input."""

    name: str
    channels: int
    stride: int


# ------------------------------------------------------------------------------------- options
def _choice(option: str, value, allowed: Sequence) -> None:
    if value not in allowed:
        raise ValueError(f"{option} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


def _flag(option: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{option} must be True or False; got {value!r}")
    return value


def _positive_int(option: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{option} must be a positive integer; got {value!r}")


def check_taps(out_features: Sequence[str] | str) -> tuple[str, ...]:
    """The requested taps, validated, in ``TAPS`` order."""
    if isinstance(out_features, str):
        out_features = (out_features,)
    requested = tuple(out_features)
    unknown = [t for t in requested if t not in TAPS]
    if unknown or not requested or len(set(requested)) != len(requested):
        raise ValueError(
            f"out_features must be a non-empty list of distinct taps among {', '.join(TAPS)}; got {requested!r}"
        )
    return tuple(t for t in TAPS if t in requested)


class TrunkPlan(NamedTuple):
    """What :func:`check_trunk_options` derives from the options: the stages to build."""

    block_cls: type[ResidualBlock]
    out_features: tuple[str, ...]
    #: stages built (0-4): those up to the deepest requested tap.
    num_stages: int
    dcn_stages: tuple[int, ...]
    multi_grid: tuple[int, ...] | None


def check_trunk_options(
    block: str,
    layers: Sequence[int],
    *,
    style: str,
    norm: str,
    output_stride: int,
    in_channels: int,
    drop_path_rate: float,
    out_features: Sequence[str],
    frozen_stages: int,
    dcn_stages: Sequence[int],
    multi_grid: Sequence[int] | None,
) -> TrunkPlan:
    """Validate the options of :class:`ResNet` that are not flags (``ValueError`` naming the option)."""
    _choice("block", block, tuple(BLOCK_TYPES))
    if len(layers) != 4 or any(not isinstance(n, int) or n < 1 for n in layers):
        raise ValueError(f"layers must be four positive block counts; got {layers!r}")
    _choice("style", style, STYLES)
    _choice("norm", norm, NORM_KINDS)
    _choice("output_stride", output_stride, OUTPUT_STRIDES)
    _positive_int("in_channels", in_channels)
    if not isinstance(drop_path_rate, (int, float)) or not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"drop_path_rate must be a number in [0, 1); got {drop_path_rate!r}")
    taps = check_taps(out_features)
    num_stages = max(STAGE_TAPS.index(t) + 1 if t in STAGE_TAPS else 0 for t in taps)
    if not isinstance(frozen_stages, int) or isinstance(frozen_stages, bool) or not -1 <= frozen_stages <= num_stages:
        raise ValueError(
            f"frozen_stages must be an integer from -1 (nothing frozen) to {num_stages} "
            f"(the deepest built stage for out_features={taps}); got {frozen_stages!r}"
        )
    block_cls = BLOCK_TYPES[block]
    if style == "caffe" and block_cls is not Bottleneck:
        raise ValueError(
            f"style='caffe' moves the stride to the first 1x1 conv of a Bottleneck; "
            f"{block!r} blocks have no such conv, so only style='pytorch' applies"
        )
    dcn = _check_dcn_stages(dcn_stages, block_cls)
    return TrunkPlan(block_cls, taps, num_stages, dcn, _check_multi_grid(multi_grid, layers, num_stages))


def _check_dcn_stages(dcn_stages: Sequence[int], block_cls: type[ResidualBlock]) -> tuple[int, ...]:
    dcn_stages = tuple(dcn_stages)
    if any(s not in (1, 2, 3, 4) for s in dcn_stages):
        raise ValueError(f"dcn_stages must hold stage numbers from 1 to 4; got {dcn_stages!r}")
    if dcn_stages and block_cls is BasicBlock:
        raise ValueError("dcn_stages needs bottleneck blocks (ResNet-50 and deeper, ResNeXt, Res2Net)")
    return dcn_stages


def _check_multi_grid(
    multi_grid: Sequence[int] | None, layers: Sequence[int], num_stages: int
) -> tuple[int, ...] | None:
    if multi_grid is None:
        return None
    multi_grid = tuple(multi_grid)
    if num_stages < 4:
        raise ValueError("multi_grid dilates the last stage, which is only built when 'c5' is requested")
    if len(multi_grid) != layers[3] or any(not isinstance(m, int) or m < 1 for m in multi_grid):
        raise ValueError(
            f"multi_grid must give one positive integer per block of the last stage "
            f"({layers[3]} blocks); got {multi_grid!r}"
        )
    return multi_grid


# -------------------------------------------------------------------------------------- layers
def make_stem(in_channels: int, *, deep_stem: bool, stem_width: int, norm: NormFactory) -> nn.Module:
    """The stem's conv (``conv1``): one 7x7/2, or (``deep_stem``) three 3x3 convs, the first strided,
    of ``stem_width``, ``stem_width`` and 64 channels. The trunk's ``bn1`` and ``relu`` follow it."""
    if not deep_stem:
        return nn.Conv2d(in_channels, STEM_CHANNELS, kernel_size=7, stride=2, padding=3, bias=False)
    return nn.Sequential(
        nn.Conv2d(in_channels, stem_width, 3, stride=2, padding=1, bias=False),
        norm(stem_width),
        nn.ReLU(inplace=True),
        nn.Conv2d(stem_width, stem_width, 3, stride=1, padding=1, bias=False),
        norm(stem_width),
        nn.ReLU(inplace=True),
        nn.Conv2d(stem_width, STEM_CHANNELS, 3, stride=1, padding=1, bias=False),
    )


def block_arguments(
    block_cls: type[ResidualBlock], *, groups: int, base_width: int, style: str, scale: int
) -> dict[str, Any]:
    """The architecture arguments ``block_cls`` takes, among the trunk's."""
    if block_cls is BasicBlock:
        return {}
    options: dict[str, Any] = dict(groups=groups, base_width=base_width)
    if block_cls is Bottleneck:
        options["style"] = style
    if block_cls is Bottle2neck:
        options["scale"] = scale
    return options


def make_stage(
    block_cls: type[ResidualBlock],
    in_channels: int,
    planes: int,
    depth: int,
    *,
    stride: int,
    dilation: int,
    previous_dilation: int,
    multi_grid: Sequence[int] | None,
    deformable: bool,
    avg_down: bool,
    norm: NormFactory,
    drop_paths: Sequence[float],
    block_args: dict[str, Any],
) -> nn.Sequential:
    """One stage: ``depth`` blocks of ``planes`` (``planes * expansion`` output channels), the first
    carrying the stride, the projection shortcut and, on its first 3x3, the previous stage's
    dilation (as timm); ``multi_grid`` multiplies the dilation block by block instead."""
    out_channels = planes * block_cls.expansion
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = make_shortcut(
            in_channels, out_channels, stride=stride, dilation=dilation, avg_down=avg_down, norm=norm
        )
    deformable_args = dict(deformable=True) if deformable else {}
    blocks = []
    for i in range(depth):
        if multi_grid is not None:
            block_dilation = first_dilation = dilation * multi_grid[i]
        else:
            block_dilation, first_dilation = dilation, previous_dilation if i == 0 else dilation
        blocks.append(
            block_cls(
                in_channels if i == 0 else out_channels,
                planes,
                stride=stride if i == 0 else 1,
                dilation=block_dilation,
                first_dilation=first_dilation,
                downsample=downsample if i == 0 else None,
                norm=norm,
                drop_path=drop_paths[i],
                **block_args,
                **deformable_args,
            )
        )
    return nn.Sequential(*blocks)


def make_stages(
    plan: TrunkPlan,
    layers: Sequence[int],
    *,
    output_stride: int,
    avg_down: bool,
    drop_path_rate: float,
    norm: NormFactory,
    block_args: dict[str, Any],
) -> tuple[list[nn.Sequential], list[FeatureInfo]]:
    """The first ``plan.num_stages`` stages (:func:`make_stage`) and the ``FeatureInfo`` of each.

    Stage ``k`` has ``64 * 2**k`` planes and stride 2 (1 for the first), until the net stride
    reaches ``output_stride``; after that it dilates instead. The stochastic-depth rate grows
    linearly from 0 on the first block to ``drop_path_rate`` on the last block of all four stages.
    """
    total = sum(layers)
    drop_paths = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
    stages, infos = [], []
    channels, net_stride, dilation = STEM_CHANNELS, 4, 1  # after the stem's max-pool
    for k in range(plan.num_stages):
        stride, previous_dilation = (1 if k == 0 else 2), dilation
        if net_stride >= output_stride:
            dilation, stride = dilation * stride, 1
        else:
            net_stride *= stride
        first = sum(layers[:k])
        stage = make_stage(
            plan.block_cls, channels, 64 * 2**k, layers[k], stride=stride, dilation=dilation,
            previous_dilation=previous_dilation, multi_grid=plan.multi_grid if k == 3 else None,
            deformable=k + 1 in plan.dcn_stages, avg_down=avg_down, norm=norm,
            drop_paths=drop_paths[first : first + layers[k]], block_args=block_args,
        )
        channels = 64 * 2**k * plan.block_cls.expansion
        stages.append(stage)
        infos.append(FeatureInfo(STAGE_TAPS[k], channels, net_stride))
    return stages, infos


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
        plan = check_trunk_options(
            block, layers, style=style, norm=norm, output_stride=output_stride, in_channels=in_channels,
            drop_path_rate=drop_path_rate, out_features=out_features, frozen_stages=frozen_stages,
            dcn_stages=dcn_stages, multi_grid=multi_grid,
        )
        self.out_features = plan.out_features
        self.in_channels = in_channels
        self.frozen_stages = frozen_stages
        self.norm_eval = _flag("norm_eval", norm_eval)
        self.checkpointing = _flag("checkpointing", checkpointing)
        norm_layer = partial(make_norm, norm)

        deep_stem = _flag("deep_stem", deep_stem)
        self.conv1 = make_stem(in_channels, deep_stem=deep_stem, stem_width=stem_width, norm=norm_layer)
        self.bn1 = norm_layer(STEM_CHANNELS)
        self.relu = nn.ReLU(inplace=True)
        if plan.num_stages:
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        block_args = block_arguments(plan.block_cls, groups=groups, base_width=base_width, style=style, scale=scale)
        stages, infos = make_stages(
            plan, layers, output_stride=output_stride, avg_down=_flag("avg_down", avg_down),
            drop_path_rate=drop_path_rate, norm=norm_layer, block_args=block_args,
        )
        for name, stage in zip(STAGE_NAMES, stages):
            self.add_module(name, stage)
        self.stage_names = STAGE_NAMES[: plan.num_stages]
        by_tap = {info.name: info for info in [FeatureInfo("stem", STEM_CHANNELS, STEM_STRIDE), *infos]}
        self.feature_info = [by_tap[t] for t in self.out_features]

        self._init_weights(_flag("zero_init_residual", zero_init_residual))
        self._apply_freezing()

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
