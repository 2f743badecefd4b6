"""Benchmark config: pydantic schema and loading (``_base_`` and ``--set`` via ``backbones_tools.config``).

A config lists models (trunks, FPN backbones, detectors, segmenters) with their options and
optional reference peers from torchvision or timm, plus the grid of input sizes and batch sizes
and how to measure (mode, dtype, memory format, device, warm-up, repeats).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Iterable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from backbones_tools.config.loader import ConfigError, format_validation_error, load_config_dict


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _close(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(name), list(known), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(close)}?" if close else ""


class PeerSpec(_Section):
    """A reference implementation of the same architecture, measured side by side."""

    source: Literal["torchvision", "timm"]
    name: str = Field(description="torchvision builder (resnet50, fasterrcnn_resnet50_fpn, ...) or timm model name")
    memory_format: Literal["contiguous", "channels_last"] = "channels_last"
    kwargs: dict[str, Any] = Field(default_factory=dict, description="extra builder arguments")
    share_weights: bool = Field(
        default=False, description="load the peer's random weights into our model (same outputs, same post-processing load)"
    )

    @property
    def label(self) -> str:
        suffix = ", channels_last" if self.memory_format == "channels_last" else ""
        return f"{self.source}:{self.name}{suffix}"

    @model_validator(mode="after")
    def _known(self) -> "PeerSpec":
        if self.source == "torchvision":
            import torchvision.models as tvm

            known = set(tvm.list_models())
            if self.name not in known:
                raise ValueError(f"unknown torchvision model {self.name!r}{_close(self.name, known)}")
        else:
            import timm

            if not timm.is_model(self.name):
                raise ValueError(f"unknown timm model {self.name!r}{_close(self.name, timm.list_models())}")
        return self


class ModelSpec(_Section):
    """One model of this package: ``model`` is a backbone variant (``backbone``/``fpn_backbone``)
    or a head kind (``detector``: faster_rcnn, ...; ``segmenter``: deeplabv3, ...) on ``backbone``."""

    model: str
    type: Literal["backbone", "fpn_backbone", "detector", "segmenter"] = "backbone"
    backbone: str | None = Field(default=None, description="trunk variant of a detector or segmenter")
    label: str | None = Field(default=None, description="row name in the reports (default: derived)")
    options: dict[str, Any] = Field(default_factory=dict, description="builder keyword arguments")
    optimize: bool = Field(default=True, description="apply backbones.optimize_for_inference (inference mode only)")
    compile: bool = Field(default=False, description="torch.compile the model (after optimizing)")
    memory_format: Literal["contiguous", "channels_last"] | None = Field(
        default=None, description="override the config's memory_format for this model"
    )
    peers: list[PeerSpec] = Field(default_factory=list)
    input_sizes: list[int] | None = Field(default=None, description="override the config's input_sizes")
    batch_sizes: list[int] | None = Field(default=None, description="override the config's batch_sizes")

    @field_validator("input_sizes", "batch_sizes")
    @classmethod
    def _positive(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (not value or any(v < 1 for v in value)):
            raise ValueError(f"must be a non-empty list of positive integers; got {value!r}")
        return value

    @model_validator(mode="after")
    def _known(self) -> "ModelSpec":
        from backbones import list_backbones

        variants = list_backbones()
        if self.type in ("backbone", "fpn_backbone"):
            if self.model not in variants:
                raise ValueError(f"unknown backbone {self.model!r}{_close(self.model, variants)}")
            if self.backbone is not None:
                raise ValueError(f"'backbone' applies to detectors and segmenters; {self.model!r} is a {self.type}")
            return self
        if self.type == "detector":
            from heads.detection import KINDS as kinds
        else:
            from heads.segmentation import SEGMENTER_KINDS as kinds
        if self.model not in kinds:
            raise ValueError(f"unknown {self.type} kind {self.model!r}{_close(self.model, kinds)} (known: {', '.join(kinds)})")
        if self.backbone is None:
            raise ValueError(f"a {self.type} needs 'backbone' (a variant such as resnet50)")
        if self.backbone not in variants:
            raise ValueError(f"unknown backbone {self.backbone!r}{_close(self.backbone, variants)}")
        return self

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        return self.model if self.backbone is None else f"{self.model}_{self.backbone}"


class BenchConfig(_Section):
    """A whole benchmark: models, the size x batch grid and the measurement settings."""

    models: list[ModelSpec] = Field(min_length=1)
    input_sizes: list[int] = Field(default_factory=lambda: [224], description="square input sides in pixels")
    batch_sizes: list[int] = Field(default_factory=lambda: [1])
    mode: Literal["inference", "train_step"] = "inference"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    memory_format: Literal["contiguous", "channels_last"] = Field(
        default="channels_last", description="memory format of our models' weights and inputs"
    )
    device: str = "cpu"
    warmup: int = Field(default=2, ge=0)
    repeats: int = Field(default=10, ge=1)
    threads: int | None = Field(default=None, ge=1, description="torch CPU threads (default: torch's)")
    isolate: bool = Field(default=True, description="run each row in a fresh subprocess")
    row_timeout_s: float = Field(default=1800.0, gt=0)
    seed: int = 0

    @field_validator("input_sizes", "batch_sizes")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if not value or any(v < 1 for v in value):
            raise ValueError(f"must be a non-empty list of positive integers; got {value!r}")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        import torch

        try:
            device = torch.device(value)
        except RuntimeError as err:
            raise ValueError(f"invalid device {value!r}: {err}") from None
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda[:N]; got {value!r}")
        return value


def validate_bench_config(data: dict[str, Any], source: str = "<dict>",
                          origin: dict[str, str] | None = None) -> BenchConfig:
    """Validate a benchmark config dict; problems raise :class:`ConfigError` naming each key."""
    try:
        return BenchConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, origin or {}, source, BenchConfig,
                                                  f"invalid benchmark config {source}")) from None


def load_bench_config(path: str | Path, overrides: Iterable[str] = ()) -> BenchConfig:
    """Load a YAML benchmark config (with ``_base_`` files and ``key.sub=value`` overrides)."""
    data, origin = load_config_dict(path, overrides)
    return validate_bench_config(data, str(path), origin)
