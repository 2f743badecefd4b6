"""ONNX export of trunks, FPN backbones and trained segmenters / detectors, checked in ONNX Runtime.

``trunk_target`` / ``checkpoint_target`` / ``module_target`` (a model in memory) describe what to
export (an eval-mode module returning a tuple of tensors, its output names, the input it expects and
its dynamic axes); ``export_onnx``
writes the ``.onnx`` file with ``torch.onnx``; ``check_onnx`` runs it in ONNX Runtime
(``CPUExecutionProvider``) and compares every output with PyTorch's (:data:`RTOL`, :data:`ATOL`).

Exporter: the TorchScript-based one (``torch.onnx.export(..., dynamo=False)``) by default. It needs
only ``onnx`` and ``onnxruntime`` (the ``export`` extra), exports every model of this package
including whole torchvision detectors, and matches ONNX Runtime to ~1e-6 of the output scale. The
``torch.export``-based one (``dynamo=True``) needs the extra package ``onnxscript``; it exports
trunks, FPN backbones and segmenters with the same accuracy, but not whole detectors (torch.export
cannot trace the data-dependent shapes of torchvision's batched NMS).

Batch norms: both exporters fold eval-mode BN into the preceding convolutions themselves (a
ResNet-50 graph is 53 Conv, 49 Relu, 16 Add, 1 MaxPool, no BatchNormalization), so the plain eval
model is exported; ``backbones.fold_batch_norms`` beforehand gives the same graph. The fused ops of
``backbones.optimize_for_inference`` (``torch.ops.mkldnn`` custom ops) have no ONNX form and are
never used here.
"""

from __future__ import annotations

import importlib
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torchvision
from torch import nn
from torch.nn import functional as F
from torchvision.models.detection.transform import GeneralizedRCNNTransform

#: Relative tolerance of the ONNX Runtime check: an output passes when
#: ``max |onnx - torch| <= RTOL * max |torch| + ATOL``.
#:
#: Both sides compute in fp32 with different kernels (PyTorch: oneDNN / its own convolutions;
#: ONNX Runtime: MLAS, and BN folded into the conv weights), so sums are accumulated in a
#: different order and every conv output carries a rounding difference of a few ulp
#: (fp32 eps = 1.2e-7) that compounds through the layers. Measured on random inputs at 224x224
#: (batch 1 and 2x160x192), trunks with random weights and randomised BN statistics: the largest
#: difference per tap is 0.4e-6..1.2e-6 of that tap's largest magnitude for resnet50,
#: res2net50_26w_4s, resnet101, resnet152, resnext101_32x8d, res2net101_26w_4s and wide_resnet50_2
#: (absolute 6e-7 at the stem up to 4e-4 at c4/c5 of resnet152 and res2net101_26w_4s, whose
#: activations reach 370..440): the error is relative to the output scale, not absolute. Whole
#: detectors, FPNs and DeepLab heads measure the same (<= 1e-6 of the scale). 1e-4 leaves ~100x
#: headroom for larger inputs, trained weights and other CPUs' kernels, while an export bug (a
#: wrong op, padding or layout, a shape baked in as a constant) gives differences of 1e-2 or
#: more of the scale (a detector's boxes: pixels; its labels must be equal).
RTOL = 1e-4
#: Absolute floor of the tolerance, for outputs that are all (near) zero: a few fp32 ulp at 1.
ATOL = 1e-6
#: Longer image side above which ``--image`` inputs of NCHW models are scaled down for the check.
MAX_IMAGE_SIDE = 1024
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EXPORTERS = ("torchscript", "dynamo")
PARTS = ("model", "backbone")
#: Default opset of the TorchScript exporter (the dynamo exporter picks its own).
DEFAULT_OPSET = 17

#: Detectors exported with a fixed input size (see ``checkpoint_target``).
STATIC_SIZE_KINDS = ("retinanet",)

INSTALL_HINT = 'pip install -e ".[export]"'


class DeployError(Exception):
    """A problem the CLIs report as ``error: ...`` with exit code :attr:`exit_code`."""

    exit_code = 2


class MissingDependencyError(DeployError):
    """An optional package (onnx, onnxruntime, onnxscript, safetensors) is not installed."""


class ExportFailedError(DeployError):
    """``torch.onnx`` could not export the model (not a user error: a limit of the exporter)."""

    exit_code = 1


def require(*modules: str, hint: str = INSTALL_HINT) -> list[Any]:
    """Import ``modules``; any missing one is a :class:`MissingDependencyError` naming them all."""
    found, missing = [], []
    for name in modules:
        try:
            found.append(importlib.import_module(name))
        except ImportError:
            missing.append(name)
    if missing:
        raise MissingDependencyError(
            f"ONNX export needs the package{'s' if len(missing) > 1 else ''} {', '.join(missing)}, "
            f"which {'are' if len(missing) > 1 else 'is'} not installed: {hint}"
        )
    return found


# ------------------------------------------------------------------------------ wrapped models


class _NamedOutputs(nn.Module):
    """``model(x)`` (a dict) as a tuple of the entries ``names``, in that order."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.names = tuple(names)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(x)
        return tuple(out[name] for name in self.names)


class _Detections(nn.Module):
    """A torchvision detector on one image ``[3, H, W]`` (values 0..1): its detections as a tuple
    (``boxes``, ``labels``, ``scores`` [, ``masks``] [, ``keypoints``, ``keypoints_scores``])."""

    def __init__(self, detector: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.detector = detector
        self.names = tuple(names)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.detector([image])[0]
        return tuple(out[name] for name in self.names)


class ExactResizeTransform(GeneralizedRCNNTransform):
    """torchvision's detector transform whose traced resize computes the output size as eager
    PyTorch does.

    Eager PyTorch sizes the resized image as ``floor(side * scale)`` in float64; torchvision's
    traced path computes it in float32, so wherever ``side * scale`` is an integer (e.g. a
    200x120 image with min_size 64, max_size 80: scale 0.4) ONNX gets one pixel less (79x47
    instead of 80x48) and every detection moves. Here the traced size is computed in float64 with
    1-element tensors (the exporter casts 0-d ones to float32), which matches eager PyTorch on every
    size (checked on ~1,700 sizes from 20 to 400 px). Eager behaviour is unchanged.
    """

    def resize(self, image: torch.Tensor, target: dict[str, torch.Tensor] | None = None):
        if not torchvision._is_tracing() or self.training or target is not None or self.fixed_size is not None:
            return super().resize(image, target)
        hw = torch.onnx.operators.shape_as_tensor(image)[-2:].to(torch.float64)
        low = torch.tensor([float(self.min_size[-1])], dtype=torch.float64) / hw.amin(0, keepdim=True)
        high = torch.tensor([float(self.max_size)], dtype=torch.float64) / hw.amax(0, keepdim=True)
        size = torch.floor(hw * torch.minimum(low, high)).to(torch.int64)
        image = F.interpolate(image[None], size=(size[0], size[1]), mode="bilinear", align_corners=False)[0]
        return image, target


# ------------------------------------------------------------------------------ export targets


@dataclass
class ExportTarget:
    """What to export: an eval-mode ``module`` whose ``forward(input)`` returns a tuple of tensors
    named ``output_names``, and the input it expects."""

    module: nn.Module
    output_names: tuple[str, ...]
    description: str
    #: ``"trunk"``, ``"fpn"``, ``"segmenter"`` or ``"detector"`` (one ``[3, H, W]`` image)
    kind: str
    #: input normalisation (mean, std) of NCHW models; a detector takes 0..1 pixels
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    in_channels: int = 3
    #: size (H, W) of the export example and of the first random check
    size: tuple[int, int] = (224, 224)
    #: shorter side images are resized to for the ``--image`` check (segmenters' eval_size)
    image_size: int | None = None
    #: height and width fixed at ``size`` (not dynamic): the model is exact only there
    static_size: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def input_name(self) -> str:
        return "image" if self.kind == "detector" else "input"

    @property
    def batched(self) -> bool:
        """Whether the input has a (dynamic) batch axis; a whole detector takes one image."""
        return self.kind != "detector"

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        if not self.batched:
            axes = {self.input_name: {} if self.static_size else {1: "height", 2: "width"}}
            axes.update({name: {0: "detections"} for name in self.output_names})
            return axes
        axes = {self.input_name: {0: "batch", 2: "height", 3: "width"}}
        axes.update({name: {0: "batch", 2: f"{name}_height", 3: f"{name}_width"} for name in self.output_names})
        return axes

    def random_input(self, batch: int = 1, size: tuple[int, int] | None = None, seed: int = 0) -> torch.Tensor:
        """Random input of the kind the model expects: N(0, 1) for normalised NCHW input (the scale
        of ImageNet-normalised images), uniform 0..1 pixels for a detector."""
        h, w = size or self.size
        gen = torch.Generator().manual_seed(seed)
        if not self.batched:
            return torch.rand(self.in_channels, h, w, generator=gen)
        return torch.randn(batch, self.in_channels, h, w, generator=gen)

    def image_input(self, rgb: np.ndarray, shorter_side: int | None = None) -> tuple[torch.Tensor, str]:
        """An ``uint8 [H, W, 3]`` image as this model's input, and a note on what was done.

        NCHW models get ImageNet normalisation (the trunks' and segmenters' training input); the
        image is resized so its shorter side is ``shorter_side`` (default: the segmenter's eval
        size), or scaled down to a longer side of :data:`MAX_IMAGE_SIDE` if it is larger. A whole
        detector gets the pixels as they are (it resizes and normalises them itself)."""
        image = torch.tensor(np.asarray(rgb, dtype=np.uint8)).permute(2, 0, 1).float() / 255.0
        if self.in_channels != 3:
            raise DeployError(f"--image gives an RGB image, but the model takes {self.in_channels} input channels")
        h, w = image.shape[-2:]
        if not self.batched:
            if self.static_size and (h, w) != tuple(self.size):
                image = F.interpolate(image[None], size=self.size, mode="bilinear", align_corners=False,
                                      antialias=True)[0]
                return image, f"{h}x{w} resized to the fixed {self.size[0]}x{self.size[1]}, pixels 0..1"
            return image, f"{h}x{w} pixels 0..1 (the detector resizes and normalises)"
        shorter = shorter_side or self.image_size
        scale = shorter / min(h, w) if shorter else min(1.0, MAX_IMAGE_SIDE / max(h, w))
        note = f"{h}x{w}"
        if scale != 1.0:
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
            image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=scale < 1)[0]
            note += f" resized to {size[0]}x{size[1]}"
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return ((image - mean) / std)[None], note + ", normalised with mean/std " + f"{self.mean}/{self.std}"

    def torch_outputs(self, x: torch.Tensor) -> list[np.ndarray]:
        with torch.no_grad():
            return [t.detach().cpu().numpy() for t in self.module(x)]


def _construction_errors(fn, *args, **kwargs):
    """Run a model constructor; its ``ValueError`` (bad tap, option, name, weights) is a user error."""
    from backbones.variants import UnknownBackboneError
    from backbones.weights import WeightsFileError, WeightsMismatchError

    try:
        return fn(*args, **kwargs)
    except (UnknownBackboneError, WeightsFileError, WeightsMismatchError):
        raise
    except ValueError as exc:
        raise DeployError(str(exc)) from exc


def trunk_target(
    name: str,
    *,
    out_features: Sequence[str] | None = None,
    fpn: bool = False,
    weights: str | os.PathLike | None = None,
    fpn_channels: int = 256,
    size: tuple[int, int] = (224, 224),
    **options: Any,
) -> ExportTarget:
    """A trunk (``create_backbone``) or, with ``fpn``, an FPN backbone (``create_fpn_backbone``)
    of variant ``name``, with random weights or the trunk checkpoint ``weights`` (any format
    ``backbones.load_weights`` reads; with ``fpn`` the pyramid stays random)."""
    from backbones import TAPS, create_backbone, create_fpn_backbone

    if weights is not None and not Path(weights).expanduser().is_file() and "://" not in str(weights):
        raise FileNotFoundError(f"weights file not found: {weights}")
    notes = []
    if fpn:
        model = _construction_errors(create_fpn_backbone, name, fpn_channels=fpn_channels, out_features=out_features,
                                     weights=weights, **options)
        names = tuple(model.level_names)
        kind, what = "fpn", f"{name} FPN backbone ({fpn_channels} channels)"
        if weights is not None:
            notes.append("trunk weights loaded; the pyramid's convs are random")
    else:
        model = _construction_errors(create_backbone, name, out_features=tuple(out_features or TAPS),
                                     weights=weights, **options)
        names = tuple(info.name for info in model.feature_info)
        kind, what = "trunk", f"{name} trunk"
    what += f", {'weights ' + str(weights) if weights else 'random weights'}"
    model.eval()
    return ExportTarget(_NamedOutputs(model, names).eval(), names, what, kind,
                        in_channels=model.in_channels if hasattr(model, "in_channels") else model.body.in_channels,
                        size=size, notes=notes)


MODULE_KINDS = ("trunk", "fpn", "segmenter", "detector")


def module_target(model: nn.Module, kind: str, *, size: tuple[int, int] = (224, 224),
                  description: str | None = None, in_channels: int = 3) -> ExportTarget:
    """A model already in memory (e.g. with weights copied from another) as an export target,
    wrapped as :func:`trunk_target` and :func:`checkpoint_target` wrap theirs: ``kind`` ``"trunk"``
    or ``"fpn"`` (returns a dict of taps / levels) and ``"segmenter"`` (``{"out"[, "aux"]}``: every
    entry is an output) on NCHW input; ``"detector"``, a torchvision detector on one ``[3, H, W]``
    image, its transform made an :class:`ExactResizeTransform` in place (eager results unchanged).
    The output names are the keys ``model`` returns on a small random input; ``model`` is put in
    eval mode."""
    if kind not in MODULE_KINDS:
        raise DeployError(f"kind must be one of {', '.join(MODULE_KINDS)}; got {kind!r}")
    model.eval()
    with torch.no_grad():
        if kind == "detector":
            model.transform.__class__ = ExactResizeTransform  # same state; only the traced resize differs
            names = tuple(model([torch.rand(in_channels, 64, 64)])[0].keys())
            wrapped: nn.Module = _Detections(model, names)
        else:
            names = tuple(model(torch.randn(1, in_channels, 64, 64)).keys())
            wrapped = _NamedOutputs(model, names)
    return ExportTarget(wrapped.eval(), names, description or f"{kind} {type(model).__name__}", kind,
                        in_channels=in_channels, size=size)


def _load_run_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, Any]:
    """The model a training checkpoint of this package holds (as tools/engine/evaluate.py
    rebuilds it: saved config, saved category map, task builder, strict ``load_state_dict``)."""
    from backbones_tools.config.loader import ConfigError
    from backbones_tools.engine.checkpoint import CheckpointError, load_checkpoint
    from backbones_tools.engine.run_checkpoint import checkpoint_config, load_run_weights, saved_category_map
    from backbones_tools.engine.tasks import build_detection_model, build_segmentation_model

    state = load_checkpoint(path)
    category_map = saved_category_map(path, state)
    if "config" not in state or category_map is None:
        raise CheckpointError(
            f"{path} holds no {'config' if 'config' not in state else 'category map'}: --checkpoint takes a "
            "checkpoint written by tools/train_det.py or tools/train_seg.py (for trunk weights use --backbone "
            "NAME --weights FILE)"
        )
    cfg = checkpoint_config(path, state)
    build = build_detection_model if cfg.task == "det" else build_segmentation_model
    try:
        model = build(cfg, category_map.num_classes)
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise CheckpointError(f"{path}: the saved config does not build a model: {exc}") from None
    load_run_weights(model, state, path)
    return model.eval(), cfg


def checkpoint_target(path: str | os.PathLike, *, part: str = "model", size: tuple[int, int] | None = None) -> ExportTarget:
    """The trained model in run checkpoint ``path`` (``best.pth`` / ``last.pth``).

    ``part="model"``: a segmenter as ``input [N, 3, H, W] -> out [N, classes, H, W]`` (logits; the
    auxiliary head is dropped), a detector as ``image [3, H, W] (0..1) -> boxes, labels, scores
    [, masks | keypoints, keypoints_scores]``. ``part="backbone"``: the trunk (segmenter) or
    trunk + FPN (detector) on normalised NCHW input, outputs named by tap / level.
    """
    if part not in PARTS:
        raise DeployError(f"part must be one of {', '.join(PARTS)}; got {part!r}")
    model, cfg = _load_run_checkpoint(path)
    m = cfg.model
    what = f"{m.kind} {m.backbone.name} from {path}"
    if cfg.task == "det":
        transform = model.transform
        if part == "backbone":
            backbone = model.backbone.eval()
            names = tuple(backbone.level_names)
            side = transform.min_size[-1]
            return ExportTarget(_NamedOutputs(backbone, names).eval(), names, f"trunk + FPN of the {what}", "fpn",
                                mean=tuple(transform.image_mean), std=tuple(transform.image_std),
                                in_channels=backbone.body.in_channels, size=size or (side, side),
                                notes=[f"input normalised with the detector's mean/std {tuple(transform.image_mean)}/"
                                       f"{tuple(transform.image_std)}"])
        transform.__class__ = ExactResizeTransform  # same state; only the traced resize differs
        side = transform.min_size[-1]
        size = size or (side, side)
        example = torch.rand(3, *size)
        with torch.no_grad():
            names = tuple(model([example])[0].keys())
        notes = ["one image per call ([3, H, W], 0..1); it resizes (min_size "
                 f"{side}, max_size {transform.max_size}) and normalises inside"]
        static = m.kind in STATIC_SIZE_KINDS
        if static:
            notes.append(f"{m.kind}: height and width are fixed at {size[0]}x{size[1]} (--input-size): with dynamic "
                         "sizes torchvision's traced RetinaNet returns wrong boxes at some aspect ratios (measured: "
                         "off by 20-60 px for 50x200 and 200x50 inputs of a 64-px model); resize/pad images to it")
        return ExportTarget(_Detections(model, names).eval(), names, f"whole {what}", "detector",
                            size=size, static_size=static, notes=notes)
    if part == "backbone":
        trunk = model.backbone.eval()
        names = tuple(info.name for info in trunk.feature_info)
        return ExportTarget(_NamedOutputs(trunk, names).eval(), names, f"trunk of the {what}", "trunk",
                            in_channels=trunk.in_channels, size=size or (224, 224))
    aug = cfg.data.seg_aug
    notes = ["output 'out': logits at the input size; the auxiliary head is not exported"] if m.aux else []
    return ExportTarget(_NamedOutputs(model, ("out",)).eval(), ("out",), what, "segmenter",
                        in_channels=model.backbone.in_channels, size=size or (224, 224),
                        image_size=aug.eval_size, notes=notes)


# ------------------------------------------------------------------------------ export and check


def export_onnx(
    target: ExportTarget,
    path: str | os.PathLike,
    *,
    exporter: str = "torchscript",
    opset: int | None = None,
) -> Path:
    """Write ``target`` to ``path`` with ``torch.onnx`` (dynamic batch and spatial axes, outputs
    named ``target.output_names``). A failure is an :class:`ExportFailedError` with the error."""
    if exporter not in EXPORTERS:
        raise DeployError(f"exporter must be one of {', '.join(EXPORTERS)}; got {exporter!r}")
    require("onnx")
    if exporter == "dynamo":
        require("onnxscript", hint="pip install onnxscript (the torch.export-based exporter needs it)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = target.random_input(batch=2 if target.batched else 1)  # batch 2: no batch-1 special case is traced
    kwargs: dict[str, Any] = dict(input_names=[target.input_name], output_names=list(target.output_names),
                                  dynamic_axes=target.dynamic_axes())
    if exporter == "dynamo":
        kwargs.update(dynamo=True, verbose=False, external_data=False)  # one self-contained file
        if opset is not None:
            kwargs["opset_version"] = opset
    else:
        kwargs.update(dynamo=False, opset_version=opset or DEFAULT_OPSET)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
            torch.onnx.export(target.module, (example,), str(path), **kwargs)
    except Exception as exc:  # noqa: BLE001 - any exporter failure is reported with its message
        raise ExportFailedError(
            f"torch.onnx ({exporter} exporter) could not export the {target.description}: "
            f"{type(exc).__name__}: {_first_lines(exc)}"
            + ("\n  the whole detector exports with the TorchScript exporter (--exporter torchscript), its "
               "trunk + FPN with either (--part backbone)" if target.kind == "detector" and exporter == "dynamo"
               else "\n  the trunk + FPN exports: add --part backbone" if target.kind == "detector" else "")
        ) from exc
    return path


def _first_lines(exc: BaseException, limit: int = 6) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    # the dynamo exporter prints its advice first and the cause under "Exception summary"
    for i, line in enumerate(lines):
        if "Exception summary" in line:
            lines = lines[i + 1:]
            break
    return "\n  ".join(lines[:limit]) if lines else "(no message)"


def onnx_session(path: str | os.PathLike, threads: int | None = None) -> Any:
    """An ONNX Runtime session on the CPU."""
    (ort,) = require("onnxruntime")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@dataclass
class OutputCheck:
    """One output compared: ONNX Runtime vs PyTorch."""

    name: str
    max_abs_diff: float
    scale: float
    tolerance: float
    ok: bool
    note: str = ""

    def __str__(self) -> str:
        if self.note:
            return f"{self.name}: {self.note}"
        return (f"{self.name}: max |diff| {self.max_abs_diff:.2e} (max |out| {self.scale:.3g}, "
                f"tol {self.tolerance:.1e}) {'ok' if self.ok else 'FAILED'}")


def compare_outputs(names: Sequence[str], ours: Sequence[np.ndarray], ref: Sequence[np.ndarray],
                    *, rtol: float = RTOL, atol: float = ATOL) -> list[OutputCheck]:
    """Per output: ``max |ours - ref| <= rtol * max |ref| + atol`` (integers: equal)."""
    checks = []
    for name, got, want in zip(names, ours, ref):
        got, want = np.asarray(got), np.asarray(want)
        if got.shape != want.shape:
            what = "detections" if got.ndim and want.ndim and name in ("boxes", "labels", "scores") else "shape"
            note = (f"{got.shape[0]} detections in ONNX Runtime vs {want.shape[0]} in PyTorch" if what == "detections"
                    else f"shape {got.shape} in ONNX Runtime vs {want.shape} in PyTorch")
            checks.append(OutputCheck(name, math.inf, 0.0, 0.0, False, note + " FAILED"))
            continue
        if want.size == 0:
            checks.append(OutputCheck(name, 0.0, 0.0, 0.0, True, "empty in both ok"))
            continue
        diff = float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max())
        scale = float(np.abs(want.astype(np.float64)).max())
        tol = 0.0 if np.issubdtype(want.dtype, np.integer) or want.dtype == bool else rtol * scale + atol
        ok = bool(np.isfinite(diff) and diff <= tol)
        checks.append(OutputCheck(name, diff, scale, tol, ok))
    return checks


def check_onnx(target: ExportTarget, path: str | os.PathLike, x: torch.Tensor, *, session: Any = None,
               rtol: float = RTOL, atol: float = ATOL) -> list[OutputCheck]:
    """Run ``path`` in ONNX Runtime on ``x`` and compare each output with ``target.module(x)``."""
    session = session or onnx_session(path)
    got = session.run(None, {target.input_name: x.numpy()})
    names = [o.name for o in session.get_outputs()]
    if names != list(target.output_names):
        raise ExportFailedError(f"{path} has outputs {names}; expected {list(target.output_names)}")
    return compare_outputs(target.output_names, got, target.torch_outputs(x), rtol=rtol, atol=atol)


def describe_input(x: torch.Tensor) -> str:
    return "x".join(map(str, x.shape))


def standard_checks(target: ExportTarget) -> list[tuple[str, torch.Tensor]]:
    """The random inputs the CLI checks: the export size, then another batch size (NCHW models)
    and another, non-square size that exercises the dynamic axes."""
    h, w = target.size
    if target.static_size:
        return [("random", target.random_input(1, (h, w), seed=1)), ("random", target.random_input(1, (h, w), seed=2))]
    if target.batched:
        return [("random", target.random_input(1, (h, w), seed=1)),
                ("random", target.random_input(2, (h + 32, w + 64), seed=2))]
    return [("random", target.random_input(1, (h, w), seed=1)),
            ("random", target.random_input(1, (h + 16, w + 48), seed=2))]


__all__ = [
    "ATOL",
    "DeployError",
    "EXPORTERS",
    "ExactResizeTransform",
    "ExportFailedError",
    "ExportTarget",
    "MissingDependencyError",
    "OutputCheck",
    "RTOL",
    "check_onnx",
    "checkpoint_target",
    "compare_outputs",
    "export_onnx",
    "module_target",
    "onnx_session",
    "require",
    "standard_checks",
    "trunk_target",
]
