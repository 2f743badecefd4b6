"""Convert any checkpoint ``backbones.load_weights`` reads to a plain trunk state dict in this
package's (torchvision / timm) key layout, written as ``.pth`` or ``.safetensors``.

Sources: torchvision, timm and official Res2Net files, detectron2 (``.pkl`` or detector
checkpoints), caffe2 ImageNet ``.pkl`` files, MMDetection checkpoints, torchvision detector state
dicts, and run checkpoints of this package (``model`` holding ``backbone.body.*`` for detectors,
``backbone.*`` for segmenters). ``convert_weights(src, arch=...)`` builds ``create_backbone(arch)``
and loads the checkpoint strictly (the result is that model's state dict); without ``arch`` the
keys are renamed, classifier weights and the other parts of a whole-model checkpoint are dropped,
and the variants whose keys and shapes the result matches are named.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from backbones.converters import FORMATS, detect_format, to_native
from backbones.weights import LoadReport, WeightsFileError, WeightsMismatchError, is_classifier_key, read_state_dict
from backbones_tools.files import atomic_path

#: Suffixes of the files ``save_state_dict`` writes: a ``torch.save`` dict, or safetensors.
TORCH_SUFFIXES = (".pth", ".pt", ".bin")
SAFETENSORS_SUFFIX = ".safetensors"


class ConversionError(ValueError):
    """A conversion that cannot be done as asked (bad output suffix, missing package, bad option)."""


@dataclass
class Conversion:
    """The converted state dict and what was found on the way."""

    state: dict[str, torch.Tensor]
    source: str
    format: str
    #: source keys left out: classifier, other parts of a whole-model checkpoint
    dropped: list[str] = field(default_factory=list)
    #: with ``arch``: the strict load report
    report: LoadReport | None = None
    arch: str | None = None
    #: without ``arch``: variants whose keys and shapes match ``state``
    matches: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: printable kind of source ("detectron2 naming", "... run checkpoint of a detection model")
    label: str = ""

    def summary(self) -> str:
        lines = [f"{self.source}: {self.label or self.format + ' naming'}, {len(self.state)} trunk tensors "
                 f"({sum(v.numel() for v in self.state.values() if v.is_floating_point()) / 1e6:.2f} M values)"]
        if self.dropped:
            shown = ", ".join(self.dropped[:8]) + (f", ... (+{len(self.dropped) - 8})" if len(self.dropped) > 8 else "")
            lines.append(f"  dropped ({len(self.dropped)}, not trunk): {shown}")
        lines.append(f"  stages: {describe_layout(self.state)}")
        if self.arch is None:
            if self.matches:
                lines.append(f"  matches create_backbone({', '.join(map(repr, self.matches))}) key for key and shape")
            else:
                lines.append("  matches no variant of create_backbone() with default options key for key; "
                             "pass --arch NAME (and --option KEY=VALUE) to see which keys differ")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def describe_layout(state: Mapping[str, torch.Tensor]) -> str:
    """Blocks per stage, block type and stem of a trunk state dict in our naming."""
    blocks: dict[int, int] = {}
    for key in state:
        m = re.match(r"layer(\d)\.(\d+)\.", key)
        if m:
            blocks[int(m.group(1))] = max(blocks.get(int(m.group(1)), 0), int(m.group(2)) + 1)
    if any(".convs." in k for k in state):
        block = "Bottle2neck (Res2Net)"
    elif any(re.match(r"layer\d\.\d+\.conv3\.", k) for k in state):
        block = "Bottleneck"
    elif blocks:
        block = "BasicBlock"
    else:
        block = "no residual blocks"
    stem = "deep stem" if "conv1.0.weight" in state else "7x7 stem" if "conv1.weight" in state else "no stem"
    depths = [blocks.get(i, 0) for i in range(1, 5)]
    return f"{depths} {block}, {stem}"


def _run_checkpoint_task(raw: Any) -> str | None:
    """``"detection"`` / ``"segmentation"`` for a run checkpoint of tools/train_*.py, else None."""
    if isinstance(raw, Mapping) and "config" in raw and isinstance(raw.get("model"), Mapping):
        return {"det": "detection", "seg": "segmentation"}.get(raw.get("task"), "trained")
    return None


def _inferred_model_keys(state: Mapping[str, torch.Tensor], fmt: str) -> set[str]:
    """Our key names that steer the renaming of ``fmt`` (deep stem) when no model is given."""
    if fmt == "detectron2" and any(re.search(r"(^|\.)stem\.conv[23]\.", k) for k in state):
        return {"conv1.0.weight"}
    return set()


def matching_variants(state: Mapping[str, torch.Tensor], fmt: str = "") -> list[str]:
    """Variants whose default ``create_backbone(name)`` has exactly ``state``'s keys and shapes
    (``num_batches_tracked`` aside; caffe2 files carry no BN running statistics)."""
    from backbones import VARIANTS, create_backbone

    def relevant(key: str) -> bool:
        return not key.endswith("num_batches_tracked") and not (fmt == "caffe2" and key.endswith(("running_mean", "running_var")))

    want = {k: tuple(v.shape) for k, v in state.items() if relevant(k)}
    found = []
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        for name in VARIANTS:
            have = {k: tuple(v.shape) for k, v in create_backbone(name).state_dict().items() if relevant(k)}
            if have == want:
                found.append(name)
    return found


def convert_weights(
    source: str | os.PathLike | Mapping[str, Any],
    *,
    format: str = "auto",
    arch: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> Conversion:
    """Convert ``source`` to a trunk state dict in this package's naming.

    With ``arch`` the checkpoint is loaded strictly into ``create_backbone(arch, **options)`` with
    ``load_weights`` (a mismatch raises ``WeightsMismatchError`` carrying the report) and the
    result is that model's state dict. Raises ``WeightsFileError`` for an unreadable source,
    ``UnknownBackboneError`` for an unknown ``arch``, ``ConversionError`` for a bad format or option.
    """
    if format not in FORMATS:
        raise ConversionError(f"--format must be one of {', '.join(FORMATS)}; got {format!r}")
    if options and arch is None:
        raise ConversionError("options (--option) apply with --arch only")
    if arch is not None:
        from backbones.variants import get_variant

        get_variant(arch)  # an unknown name is an UnknownBackboneError listing close matches, before reading
    state, name, raw = read_state_dict(source)
    run = _run_checkpoint_task(raw)
    if arch is not None:
        from backbones import create_backbone, load_weights

        try:
            model = create_backbone(arch, **dict(options or {}))
        except ValueError as exc:
            raise ConversionError(f"create_backbone({arch!r}, ...): {exc}") from exc
        # the raw object, not the flat state: load_weights reads its metadata (detectron2 __author__)
        try:
            report = load_weights(model, raw if isinstance(raw, Mapping) else state, format=format, strict=True)
        except WeightsMismatchError as exc:
            exc.report.source = name
            raise
        report.source = name
        converted = {k: v.detach().clone() for k, v in model.state_dict().items()}
        label = f"{report.format} naming" + (f", run checkpoint of a {run} model" if run else "")
        return Conversion(converted, name, report.format, dropped=list(report.ignored), report=report,
                          arch=arch, notes=list(report.notes), label=label)
    fmt = detect_format(state) if format == "auto" else format
    renamed, dropped = to_native(state, fmt, _inferred_model_keys(state, fmt))
    classifier = [k for k in renamed if is_classifier_key(k)]
    for key in classifier:
        del renamed[key]
    if not renamed:
        raise WeightsFileError(f"{name} holds no trunk weights in {fmt} naming (found: {', '.join(list(state)[:8])}, ...)")
    label = f"{fmt} naming" + (f", run checkpoint of a {run} model" if run else "")
    conversion = Conversion(renamed, name, fmt, dropped=list(dropped) + classifier, label=label)
    conversion.matches = matching_variants(renamed, fmt)
    if fmt == "caffe2":
        conversion.notes.append("caffe2 folded the BN statistics into scale and bias: the file has no running "
                                "mean/var; load it with norm='FrozenBN', style='caffe' (detectron2 STRIDE_IN_1X1)")
    return conversion


def save_state_dict(state: Mapping[str, torch.Tensor], path: str | os.PathLike,
                    metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``state`` to ``path`` atomically: ``.safetensors`` with ``safetensors.torch.save_file``,
    ``.pth``/``.pt``/``.bin`` with ``torch.save`` (a plain dict of tensors, readable with
    ``weights_only=True``)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (*TORCH_SUFFIXES, SAFETENSORS_SUFFIX):
        raise ConversionError(f"{path}: the output must end in {', '.join(TORCH_SUFFIXES)} or {SAFETENSORS_SUFFIX}")
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    if suffix == SAFETENSORS_SUFFIX:
        try:
            from safetensors.torch import save_file
        except ImportError:
            raise ConversionError(
                f"writing {path.name} needs the safetensors package, which is not installed: pip install safetensors "
                f"(or write a {TORCH_SUFFIXES[0]} file)"
            ) from None
        tensors = {k: v.clone() for k, v in tensors.items()}  # safetensors refuses tensors sharing memory
    with atomic_path(path) as tmp:
        if suffix == SAFETENSORS_SUFFIX:
            save_file(tensors, str(tmp), metadata=dict(metadata or {}))
        else:
            torch.save(tensors, tmp)
    return path


__all__ = [
    "Conversion",
    "ConversionError",
    "convert_weights",
    "describe_layout",
    "matching_variants",
    "save_state_dict",
]
