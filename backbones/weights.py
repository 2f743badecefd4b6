"""Checkpoint loading: read a local file, URL or state dict, rename keys, load, and report."""

from __future__ import annotations

import math
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlparse

import numpy as np
import torch
from torch import nn

from .converters import FORMATS, detect_format, to_native

WeightsSource = str | os.PathLike | Mapping[str, Any]

# Containers in which training frameworks nest the state dict (mmdet/timm, detectron2, caffe2).
_CONTAINER_KEYS = ("state_dict", "model", "blobs")
_FIRST_CONV_KEYS = ("conv1.weight", "conv1.0.weight")


class WeightsFileError(ValueError):
    """A checkpoint that cannot be found, fetched or read."""


class WeightsMismatchError(ValueError):
    """A checkpoint whose keys or shapes do not fit the model; ``report`` says which."""

    def __init__(self, report: "LoadReport") -> None:
        super().__init__(f"checkpoint does not fit the model:\n{report}")
        self.report = report


@dataclass
class LoadReport:
    """What ``load_weights`` did, key by key (names are the model's unless stated)."""

    source: str
    format: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    #: checkpoint keys skipped on purpose: classifier, stages the model does not build, other
    #: parts of a whole-detector checkpoint.
    ignored: list[str] = field(default_factory=list)
    #: model keys left at their initialisation on purpose (zero DCN offsets, default BN statistics).
    initialized: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every model key got a value of the right shape and nothing foreign was left."""
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        lines = [f"{self.source} ({self.format}): {len(self.loaded)} tensors loaded"]

        def listing(title: str, items: list) -> None:
            if items:
                shown = ", ".join(map(str, items[:12])) + (f", ... (+{len(items) - 12})" if len(items) > 12 else "")
                lines.append(f"  {title} ({len(items)}): {shown}")

        listing("missing", self.missing)
        listing("unexpected", self.unexpected)
        listing("shape mismatch (key, checkpoint, model)", self.mismatched)
        listing("ignored", self.ignored)
        listing("left at initialisation", self.initialized)
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def refused_for_objects(exc: BaseException, path: str | os.PathLike) -> bool:
    """Whether a safe load (``torch.load(..., weights_only=True)`` or the ``.pkl`` reader) refused
    ``path`` for holding Python objects other than tensors, rather than for being corrupt: both
    raise ``UnpicklingError``, but a refused file is a whole torch archive or pickle."""
    if not isinstance(exc, pickle.UnpicklingError) or "truncated" in str(exc):
        return False
    if "global" in str(exc) or "refusing to unpickle" in str(exc):
        return True
    with open(path, "rb") as f:
        head = f.read(1)
    return zipfile.is_zipfile(path) or head == b"\x80"  # a torch archive, or a pickle (PROTO opcode)


def pickled_objects_message(path: str | os.PathLike) -> str:
    """What to tell a user whose file :func:`refused_for_objects`."""
    return (
        f"{path} contains code or Python objects other than tensors and plain containers, so it was "
        "not loaded (loading such a file can run arbitrary code). If you trust the file, convert it "
        "once to plain tensors:\n  python -c \"import torch; s = torch.load('OLD.pth', weights_only=False); "
        "torch.save(s.get('model', s) if isinstance(s, dict) else s.state_dict(), 'NEW.pth')\"\n"
        "and pass NEW.pth as model.weights or model.backbone.weights"
    )


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler for detectron2/caffe2 ``.pkl`` files that admits numpy arrays and nothing else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("collections", "OrderedDict"),
        ("_codecs", "encode"),  # how a protocol-2 pickle written by Python 3 stores bytes
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: only numpy arrays are allowed")


def _fetch(url: str) -> Path:
    """The local copy of ``url`` in the torch hub cache, downloading it if it is not there yet."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(path), progress=False)
        except Exception as err:  # urllib raises several unrelated types
            raise WeightsFileError(
                f"could not download {url} ({err}); to work offline, put the file at {path}"
            ) from err
    return path


def _read_file(path: Path) -> Any:
    if not path.is_file():
        raise WeightsFileError(f"checkpoint file not found: {path}")
    try:
        if path.suffix == ".pkl":
            with open(path, "rb") as f:
                return _ArrayUnpickler(f, encoding="latin1").load()
        if path.suffix == ".safetensors":
            try:
                from safetensors.torch import load_file
            except ImportError:
                raise WeightsFileError(f"{path}: reading .safetensors files needs the safetensors package "
                                       "(pip install safetensors)") from None
            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not refused_for_objects(err, path):
            raise WeightsFileError(f"{path} is not a readable checkpoint (corrupt or truncated?): {err}") from None
        raise WeightsFileError(pickled_objects_message(path)) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, UnicodeDecodeError) as err:
        raise WeightsFileError(f"{path} is not a readable checkpoint (corrupt or truncated?): {err}") from err


def _unwrap(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """The flat ``{name: tensor}`` inside a checkpoint, converting numpy arrays to tensors."""
    for _ in range(3):
        if isinstance(obj, Mapping):
            nested = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if nested is None:
                break
            obj = nested
    if not isinstance(obj, Mapping):
        raise WeightsFileError(f"{source} does not hold a state dict (found {type(obj).__name__})")
    state = {}
    for key, value in obj.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        if isinstance(value, torch.Tensor):
            state[str(key)] = value
    if not state:
        raise WeightsFileError(f"{source} holds no tensors")
    return state


def read_state_dict(source: WeightsSource) -> tuple[dict[str, torch.Tensor], str, Any]:
    """Read ``source`` (path, URL or mapping) into a flat state dict.

    Returns the state dict, a printable name of the source, and the raw object read (for metadata).
    """
    if isinstance(source, Mapping):
        return _unwrap(source, "state dict"), "state dict", source
    text = os.fspath(source)
    path = _fetch(text) if urlparse(text).scheme in ("http", "https") else Path(text).expanduser()
    raw = _read_file(path)
    return _unwrap(raw, text), text, raw


def adapt_input_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Turn a first-conv kernel trained on RGB into one for ``in_channels`` inputs.

    One channel gets the sum over RGB; more channels get RGB repeated cyclically and rescaled by
    3 / in_channels, so the response to a grey image of any channel count stays the same.
    """
    if weight.shape[1] != 3:
        raise ValueError(f"can only adapt an RGB first conv; checkpoint kernel has shape {tuple(weight.shape)}")
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = math.ceil(in_channels / 3)
    return weight.repeat(1, repeats, 1, 1)[:, :in_channels] * (3.0 / in_channels)


def is_classifier_key(key: str) -> bool:
    """Whether ``key`` is an ImageNet classifier weight (torchvision/timm ``fc``, caffe2 ``pred_w``)."""
    return bool(re.match(r"(fc|head\.fc|classifier|linear)\.|(pred|fc1000)_[wb]$", key))


def _is_deliberately_skipped(key: str, model: nn.Module) -> bool:
    """Classifier weights and stages the model does not build (it stops at its deepest tap)."""
    if is_classifier_key(key):
        return True
    m = re.match(r"layer(\d)\.", key)
    built = len(getattr(model, "stage_names", ("layer1", "layer2", "layer3", "layer4")))
    return bool(m) and int(m.group(1)) > built


def _style_note(raw: Any, fmt: str, model: nn.Module) -> str | None:
    """detectron2's STRIDE_IN_1X1 (MSRA/caffe2 weights) is this package's ``style="caffe"``."""
    author = raw.get("__author__") if isinstance(raw, Mapping) else None
    if fmt == "caffe2" or (fmt == "detectron2" and author not in (None, "torchvision")):
        first = getattr(getattr(model, "layer2", [None])[0], "conv1", None)
        if first is not None and first.stride == (1, 1):
            return (
                "these weights were trained with the stride on the first 1x1 conv (detectron2 "
                "STRIDE_IN_1X1); build the backbone with style='caffe' to use them as trained"
            )
    return None


def load_matching(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    source: str = "state dict",
    format: str = "",
    strict: bool = True,
    skip: Callable[[str], bool] = lambda key: False,
    keep_init: Callable[[str], bool] = lambda key: False,
) -> LoadReport:
    """Load ``state`` (already in ``model``'s key names) into ``model`` key by key and report.

    ``skip(key)`` marks checkpoint keys that are left out on purpose (listed as ``ignored``);
    ``keep_init(key)`` marks model keys that may stay at their initialisation (``initialized``).
    Everything else that does not match is ``missing``, ``unexpected`` or ``mismatched``, and with
    ``strict`` raises :class:`WeightsMismatchError` before anything is loaded.
    """
    model_state = model.state_dict()
    report = LoadReport(source=source, format=format)
    to_load: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key not in model_state:
            if skip(key) or key.endswith("num_batches_tracked"):
                report.ignored.append(key)
            else:
                report.unexpected.append(key)
        elif tuple(value.shape) != tuple(model_state[key].shape):
            report.mismatched.append((key, tuple(value.shape), tuple(model_state[key].shape)))
        else:
            to_load[key] = value
    mismatched = {m[0] for m in report.mismatched}
    for key in model_state:
        if key in to_load or key in mismatched or key.endswith("num_batches_tracked"):
            continue
        (report.initialized if keep_init(key) else report.missing).append(key)
    if strict and not report.ok:
        raise WeightsMismatchError(report)
    model.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    return report


def _adapt_first_conv(state: dict[str, torch.Tensor], model_state: Mapping[str, torch.Tensor]) -> list[str]:
    """Adapt, in ``state``, an RGB first-conv kernel to the model's input channels; return notes."""
    first_conv = next((k for k in _FIRST_CONV_KEYS if k in model_state), None)
    if not first_conv or first_conv not in state:
        return []
    want, have = model_state[first_conv].shape[1], state[first_conv].shape[1]
    if want == have or have != 3:
        return []
    state[first_conv] = adapt_input_conv(state[first_conv], want)
    return [f"{first_conv} adapted from 3 to {want} input channels"]


def _left_at_init(fmt: str, key: str) -> bool:
    """Model keys a checkpoint of format ``fmt`` rightly lacks."""
    if ".conv_offset." in key:  # DCN offsets start at zero
        return True
    # caffe2 folded the BN statistics into scale and bias: the defaults (0, 1) are right.
    return fmt == "caffe2" and key.endswith(("running_mean", "running_var"))


def load_weights(
    model: nn.Module, source: WeightsSource, *, format: str = "auto", strict: bool = True
) -> LoadReport:
    """Load a backbone checkpoint into ``model`` and report what matched.

    Args:
        model: a trunk from :func:`create_backbone` (or any module with the same key names).
        source: a local path (``.pth``/``.pt``/``.bin``, detectron2 ``.pkl``, ``.safetensors``), an
            http(s) URL (cached in the torch hub folder; offline works once it is there), or a
            state dict. ``torch.load`` runs with ``weights_only=True``.
        format: ``"auto"`` (guessed from the keys) or one of ``torchvision``, ``timm``,
            ``res2net``, ``detectron2``, ``caffe2``, ``mmdet``, ``torchvision_detector``.
        strict: raise :class:`WeightsMismatchError` (carrying the report) when a key is missing,
            unexpected or of the wrong shape. Classifier weights and stages the model does not
            build are skipped in any case and listed as ``ignored``.

    Returns:
        A :class:`LoadReport`.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(map(repr, FORMATS))}; got {format!r}")
    state, name, raw = read_state_dict(source)
    fmt = detect_format(state) if format == "auto" else format
    model_state = model.state_dict()
    state, dropped = to_native(state, fmt, set(model_state))
    notes = _adapt_first_conv(state, model_state)
    report = load_matching(
        model,
        state,
        source=name,
        format=fmt,
        strict=strict,
        skip=lambda key: _is_deliberately_skipped(key, model),
        keep_init=partial(_left_at_init, fmt),
    )
    report.ignored = list(dropped) + report.ignored
    report.notes = notes + report.notes
    note = _style_note(raw, fmt, model)
    if note:
        report.notes.append(note)
    return report
