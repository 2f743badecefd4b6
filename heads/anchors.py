"""Anchor generators and RoI poolers derived from a pyramid's levels, and checks of user-given ones.

Every level of the pyramid gets anchors, so the number of anchor-size and aspect-ratio entries must
equal the number of levels; RoI poolers read feature maps by name, so their ``featmap_names`` must be
level names of the pyramid. These functions build both from ``feature_info`` and reject
overrides that do not fit, with an error naming what does not match.
"""

from __future__ import annotations

from numbers import Real
from typing import Sequence

from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import MultiScaleRoIAlign

Levels = Sequence  # of backbones.FeatureInfo: (name, channels, stride)


def _names(levels: Levels) -> str:
    return ", ".join(level.name for level in levels)


def default_anchor_sizes(levels: Levels, size_per_stride: float, scales_per_octave: int = 1) -> tuple[tuple[int, ...], ...]:
    """Anchor sizes per level: ``size_per_stride * stride``, times ``2 ** (k / scales_per_octave)``.

    Faster R-CNN uses 8 x stride (32 on P2 .. 512 on P6), RetinaNet 4 x stride with three scales
    per octave (32, 40, 50 on P3), FCOS the stride itself (8 on P3 .. 128 on P7).
    """
    return tuple(
        tuple(int(size_per_stride * level.stride * 2 ** (k / scales_per_octave)) for k in range(scales_per_octave))
        for level in levels
    )


def _per_level(option: str, value, levels: Levels) -> tuple[tuple[float, ...], ...]:
    """``value`` as one tuple per level; a flat sequence of numbers gives one number per level
    (anchor sizes) or, for aspect ratios, the same ratios on every level."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise ValueError(f"{option} must be a non-empty sequence (one entry per pyramid level); got {value!r}")
    if all(isinstance(v, Real) for v in value):
        value = (tuple(value),) * len(levels) if option == "aspect_ratios" else tuple((v,) for v in value)
    entries = []
    for entry in value:
        entry = (entry,) if isinstance(entry, Real) else entry
        if isinstance(entry, (str, bytes)) or not isinstance(entry, Sequence) or not entry:
            raise ValueError(f"{option} entries must be non-empty sequences of positive numbers; got {entry!r}")
        if not all(isinstance(v, Real) and not isinstance(v, bool) and v > 0 for v in entry):
            raise ValueError(f"{option} entries must hold positive numbers; got {entry!r}")
        entries.append(tuple(entry))
    if len(entries) != len(levels):
        raise ValueError(
            f"{option} gives {len(entries)} level(s) but the backbone's pyramid has {len(levels)} "
            f"({_names(levels)}): give one entry per level"
        )
    return tuple(entries)


def check_anchor_generator(generator: AnchorGenerator, levels: Levels, *, option: str, anchors_per_location: int | None = None) -> None:
    """Raise ``ValueError`` unless ``generator`` has one size and ratio entry per level, the same
    number of anchors at every level (the heads predict a fixed count) and, if given, exactly
    ``anchors_per_location`` of them."""
    if not isinstance(generator, AnchorGenerator):
        raise TypeError(f"{option} must be a torchvision AnchorGenerator; got {type(generator).__name__}")
    for what, entries in (("sizes", generator.sizes), ("aspect_ratios", generator.aspect_ratios)):
        if len(entries) != len(levels):
            raise ValueError(
                f"{option} has {len(entries)} {what} entries but the backbone's pyramid has "
                f"{len(levels)} levels ({_names(levels)}): give one entry per level"
            )
    counts = generator.num_anchors_per_location()
    if len(set(counts)) != 1:
        per_level = ", ".join(f"{level.name}: {n}" for level, n in zip(levels, counts))
        raise ValueError(
            f"{option} places a different number of anchors per location on each level ({per_level}); "
            "the detection heads predict the same number on every level"
        )
    if anchors_per_location is not None and counts[0] != anchors_per_location:
        raise ValueError(
            f"{option} places {counts[0]} anchors per location; this detector needs exactly {anchors_per_location}"
        )


def make_anchor_generator(
    levels: Levels,
    *,
    sizes,
    aspect_ratios,
    option: str = "anchor_sizes/aspect_ratios",
    anchors_per_location: int | None = None,
) -> AnchorGenerator:
    """An ``AnchorGenerator`` for ``levels`` from per-level (or flat, see ``_per_level``) sizes and ratios."""
    generator = AnchorGenerator(_per_level("anchor_sizes", sizes, levels), _per_level("aspect_ratios", aspect_ratios, levels))
    check_anchor_generator(generator, levels, option=option, anchors_per_location=anchors_per_location)
    return generator


def check_roi_pool(pool: MultiScaleRoIAlign, levels: Levels, *, option: str) -> None:
    """Raise ``ValueError`` unless ``pool`` reads only feature maps the pyramid produces."""
    if not isinstance(pool, MultiScaleRoIAlign):
        raise TypeError(f"{option} must be a torchvision MultiScaleRoIAlign; got {type(pool).__name__}")
    known = {level.name for level in levels}
    unknown = [name for name in pool.featmap_names if name not in known]
    if unknown or not pool.featmap_names:
        raise ValueError(
            f"{option} reads feature maps {list(pool.featmap_names)}, but the backbone's pyramid returns "
            f"{_names(levels)} ({', '.join(map(repr, unknown)) or 'nothing'} not among them)"
        )


def make_roi_pool(featmap_names: Sequence[str], output_size: int) -> MultiScaleRoIAlign:
    """torchvision's RoI pooler (sampling ratio 2) over the named levels."""
    return MultiScaleRoIAlign(featmap_names=list(featmap_names), output_size=output_size, sampling_ratio=2)
