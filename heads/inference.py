"""Detector inference (and CPU training) speed-ups on top of ``backbones.inference``.

``optimize_for_inference(model)`` is ``backbones.optimize_for_inference`` for every model this
package builds, detectors included: besides folding the norms, fusing the activations and
switching to channels-last, it runs the RoI-align of the detectors' ``MultiScaleRoIAlign``
poolers as a gather over the channels-last feature maps (:class:`GatherMultiScaleRoIAlign`), and
their box heads' fc6 on those channels-last RoI features as they are (:class:`ChannelsLastTwoMLPHead`).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.ops import MultiScaleRoIAlign

from backbones.compat import named_child_slots
from backbones.inference import OneDnnLinear, optimize_layers
from backbones.low_precision import check_inference_dtype, run_in_dtype

from .compat import setup_scales

#: torchvision's detectors: their ``backbone`` (trunk + FPN) is what runs in bf16 on request.
DETECTORS = (GeneralizedRCNN, RetinaNet, FCOS)

__all__ = [
    "ChannelsLastTwoMLPHead",
    "GatherMultiScaleRoIAlign",
    "optimize_for_inference",
    "roi_align_gather",
    "use_channels_last_box_head",
    "use_gather_roi_align",
]


def _roi_axis(
    start: torch.Tensor, bin_size: torch.Tensor, pooled: int, grid: int, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear taps along one axis for every RoI: indices and weights of shape (K, pooled, grid, 2),
    with torchvision's sample positions and border rules (outside [-1, size]: weight 0)."""
    dtype, device = start.dtype, start.device
    cell = torch.arange(pooled, device=device, dtype=dtype).repeat_interleave(grid)
    sub = (torch.arange(grid, device=device, dtype=dtype) + 0.5).repeat(pooled)
    pos = start[:, None] + cell[None] * bin_size[:, None] + sub[None] * (bin_size[:, None] / grid)
    valid = (pos >= -1.0) & (pos <= size)
    pos = pos.clamp(min=0.0)
    low = pos.floor().long()
    edge = low >= size - 1
    low = low.clamp(max=size - 1)
    high = torch.where(edge, low, low + 1)
    frac = torch.where(edge, torch.zeros_like(pos), pos - low.to(dtype))
    weights = torch.stack([1.0 - frac, frac], -1) * valid[..., None]
    return torch.stack([low, high], -1).view(-1, pooled, grid, 2), weights.view(-1, pooled, grid, 2)


def _per_bin(along_y: torch.Tensor, along_x: torch.Tensor, combine: Callable[..., torch.Tensor]) -> torch.Tensor:
    """``combine(along_y[k, i, gy, ty], along_x[k, j, gx, tx])`` for every RoI ``k``, output bin
    ``(i, j)`` and tap ``(gy, gx, ty, tx)``: a (K, ph, pw, 4 g^2) tensor from two (K, pooled, g, 2)
    ones. Both are first spread over a bin's 4 g^2 taps (small tensors), so that the big broadcast
    runs over whole bins rather than over seven dimensions of 2 to 7 elements: 1,000 RoIs took
    2.0 ms instead of 7.4 (one-off, 2-core AMD EPYC, AVX512-BF16)."""
    k, ph, grid = along_y.shape[:3]
    pw, taps = along_x.shape[1], 4 * grid * grid
    ys = along_y.view(k, ph, grid, 1, 2, 1).expand(k, ph, grid, grid, 2, 2).reshape(k, ph, 1, taps)
    xs = along_x.view(k, pw, 1, grid, 1, 2).expand(k, pw, grid, grid, 2, 2).reshape(k, 1, pw, taps)
    return combine(ys, xs)


def roi_align_gather(
    features: torch.Tensor, rois: torch.Tensor, output_size: tuple[int, int], spatial_scale: float,
    sampling_ratio: int, aligned: bool = False,
) -> torch.Tensor:
    """``torchvision.ops.roi_align`` for a fixed ``sampling_ratio > 0``, computed as one weighted
    gather over the channels-last feature map (``F.embedding_bag``, multi-threaded and vectorised
    over channels); returns ``(K, C, *output_size)`` in channels-last layout. The CPU kernel of
    torchvision loops over channels with strided reads; this is several times faster
    (``tools/measure_roi_align.py``).

    Differentiable in ``features``: the backward is the matching scatter-add (the CPU detection
    demo's training step takes 0.30 s with it, 0.46 s with torchvision's backward). Sample
    positions, weights and sums are float32 even for bf16/fp16 features (as torchvision's autocast
    rule for ``roi_align``); the result has ``features``' dtype.
    """
    n, c, h, w = features.shape
    ph, pw = output_size
    k, grid = rois.shape[0], sampling_ratio
    offset = 0.5 if aligned else 0.0
    compute = torch.promote_types(features.dtype, torch.float32)
    boxes = rois[:, 1:5].to(compute) * spatial_scale - offset
    x1, y1, x2, y2 = boxes.unbind(1)
    width, height = x2 - x1, y2 - y1
    if not aligned:
        width, height = width.clamp(min=1.0), height.clamp(min=1.0)
    yi, yw = _roi_axis(y1, height / ph, ph, grid, h)
    xi, xw = _roi_axis(x1, width / pw, pw, grid, w)
    base = rois[:, 0].long() * (h * w)
    index = _per_bin(base.view(k, 1, 1, 1) + yi * w, xi, torch.add)
    weight = _per_bin(yw, xw, torch.mul).div_(grid * grid)
    table = features.permute(0, 2, 3, 1).reshape(n * h * w, c).to(compute)  # a view when channels-last fp32
    taps = index.shape[-1]
    out = F.embedding_bag(index.view(-1, taps), table, per_sample_weights=weight.view(-1, taps), mode="sum")
    return out.view(k, ph, pw, c).permute(0, 3, 1, 2).to(features.dtype)


class GatherMultiScaleRoIAlign(MultiScaleRoIAlign):
    """``MultiScaleRoIAlign`` whose per-level RoI-align runs :func:`roi_align_gather` on the CPU,
    in inference and in training (same outputs and gradients up to float rounding); elsewhere
    (CUDA, TorchScript, ``torch.compile``) it is torchvision's."""

    @classmethod
    def from_pool(cls, pool: MultiScaleRoIAlign) -> "GatherMultiScaleRoIAlign":
        """The same pooler (levels, output size, sampling ratio, canonical scale and level)."""
        new = cls(
            pool.featmap_names, pool.output_size, pool.sampling_ratio,
            canonical_scale=pool.canonical_scale, canonical_level=pool.canonical_level,
        )
        new.scales, new.map_levels = pool.scales, pool.map_levels
        return new

    def forward(  # type: ignore[override]
        self, x: dict[str, torch.Tensor], boxes: list[torch.Tensor], image_shapes: list[tuple[int, int]]
    ) -> torch.Tensor:
        levels = [v for k, v in x.items() if k in self.featmap_names]
        fast = (
            self.sampling_ratio > 0
            and not torch.compiler.is_compiling()
            and not torch.jit.is_scripting()
            and all(f.device.type == "cpu" for f in levels)
        )
        if not fast:
            return super().forward(x, boxes, image_shapes)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = setup_scales(self, levels, image_shapes)
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)], dim=0)
        output_size = tuple(self.output_size)
        if len(levels) == 1:
            return roi_align_gather(levels[0], rois, output_size, self.scales[0], self.sampling_ratio)
        which = self.map_levels(boxes)
        first = levels[0]
        # (K, ph, pw, C); every RoI is written below: map_levels clamps its levels to the pooler's
        result = first.new_empty((rois.shape[0], *output_size, first.shape[1]))
        for level, (feature, scale) in enumerate(zip(levels, self.scales)):
            index = torch.where(which == level)[0]
            if index.numel():
                pooled = roi_align_gather(feature, rois[index], output_size, scale, self.sampling_ratio)
                result[index] = pooled.permute(0, 2, 3, 1).to(result.dtype)
        return result.permute(0, 3, 1, 2)


def use_gather_roi_align(model: nn.Module) -> int:
    """Swap every ``MultiScaleRoIAlign`` (fixed sampling ratio) in ``model`` for a
    :class:`GatherMultiScaleRoIAlign` in place; returns how many were swapped. Used by
    :func:`optimize_for_inference`, and by the training tools to speed up CPU training."""
    replaced = 0
    for module in list(model.modules()):
        for name, child in named_child_slots(module):
            if type(child) is MultiScaleRoIAlign and child.sampling_ratio > 0:
                setattr(module, name, GatherMultiScaleRoIAlign.from_pool(child))
                replaced += 1
    return replaced


def _channels_last_only(x: torch.Tensor) -> bool:
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


class ChannelsLastTwoMLPHead(TwoMLPHead):
    """torchvision's ``TwoMLPHead`` taking channels-last RoI features (as
    :class:`GatherMultiScaleRoIAlign` returns them) without first copying them into NCHW order: fc6
    runs on their (h, w, c) flattening, a view, with its weight's input features permuted to that
    order once (again when the weight changes; ``state_dict`` keeps torchvision's order). Other
    inputs take torchvision's path. Same outputs up to float rounding.

    On 1,000 RoIs the head took 96.6 against 101.6 ms (``tools/measure_inference.py``, 2 threads,
    AVX512-BF16)."""

    @classmethod
    def from_head(cls, head: TwoMLPHead) -> "ChannelsLastTwoMLPHead":
        """The same head (its ``fc6`` and ``fc7`` modules, shared)."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.fc6, new.fc7 = head.fc6, head.fc7
        return new

    def __getstate__(self) -> dict:
        """Copies and pickles leave the permuted weight out (it is rebuilt on first use)."""
        return {**super().__getstate__(), "_hwc_weight": None}

    def _weight_for(self, chw: torch.Size) -> torch.Tensor:
        weight = self.fc6.weight
        channels, height, width = chw
        key = (weight.data_ptr(), None if weight.is_inference() else weight._version, tuple(chw))
        cached = self.__dict__.get("_hwc_weight")
        if cached is None or cached[0] != key or key[1] is None:  # no version counter: no reuse
            permuted = weight.view(-1, channels, height, width).permute(0, 2, 3, 1).reshape(weight.shape[0], -1)
            self._hwc_weight = cached = (key, permuted.contiguous())
        return cached[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if not _channels_last_only(x) or x.shape[1:].numel() != self.fc6.in_features:
            return super().forward(x)
        flat = x.permute(0, 2, 3, 1).flatten(1)  # a view of channels-last memory
        weight = self._weight_for(x.shape[1:])
        fc6 = self.fc6(flat, weight) if isinstance(self.fc6, OneDnnLinear) else F.linear(flat, weight, self.fc6.bias)
        return F.relu(self.fc7(F.relu(fc6)))


def use_channels_last_box_head(model: nn.Module) -> int:
    """Swap every ``TwoMLPHead`` in ``model`` for a :class:`ChannelsLastTwoMLPHead` in place;
    returns how many were swapped."""
    replaced = 0
    for module in list(model.modules()):
        for name, child in named_child_slots(module):
            if type(child) is TwoMLPHead:
                setattr(module, name, ChannelsLastTwoMLPHead.from_head(child))
                replaced += 1
    return replaced


def optimize_for_inference(
    model: nn.Module, *, channels_last: bool = True, fold: bool = True, fuse: bool = True, inplace: bool = True,
    fast_roi_align: bool = True, winograd: bool = True, dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """Make any model of this package fast for inference, detectors included, and return it
    (``model`` itself, or with ``inplace=False`` an optimized deep copy, e.g. to evaluate during
    training and keep training the original).

    Runs ``backbones.optimize_for_inference``'s steps (eval mode and no gradients; ``fold``: batch
    norms folded into the convs; ``fuse``: ReLUs and residual adds fused into them;
    ``channels_last``: channels-last weights; ``winograd``: Winograd 3x3 convolutions where they
    are faster, the FPN and RPN convolutions on P2/P3; see ``backbones.inference``) on the whole model, and
    with ``fast_roi_align`` swaps the detectors' ``MultiScaleRoIAlign`` poolers for
    :class:`GatherMultiScaleRoIAlign` (channels-last RoI features) and their ``TwoMLPHead`` box heads
    for :class:`ChannelsLastTwoMLPHead` (which takes those without a copy). Outputs stay the same up
    to float rounding.

    The result is for inference only, and its ``state_dict`` has lost the ``bn*`` keys and gained
    ``conv*.bias``: load checkpoints before calling this.

    ``dtype=torch.bfloat16`` (opt-in; fast where bf16 is native: AVX512-BF16 or AMX CPUs, GPUs)
    computes in bf16 behind an fp32 interface (``backbones.low_precision``): a segmenter or trunk as
    a whole, a detector's backbone and FPN only, so that its RPN, box regression and NMS stay fp32.
    """
    check_inference_dtype(dtype)
    model = optimize_layers(model, channels_last=channels_last, fold=fold, fuse=fuse, inplace=inplace,
                            winograd=winograd)
    if fast_roi_align:
        use_gather_roi_align(model)
        use_channels_last_box_head(model)
    run_in_dtype(model.backbone if isinstance(model, DETECTORS) else model, dtype)
    return model
