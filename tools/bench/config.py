"""Benchmark config: pydantic schema and loading (``_base_`` and ``--set`` via ``backbones_tools.config``).

A config lists models (trunks, FPN backbones, detectors, segmenters) with their options and
optional peers, plus the grid of input sizes and batch sizes and how to measure (mode, dtype,
memory format, device, warm-up, repeats). A peer is a reference implementation of the same
architecture (torchvision, timm) or a runtime that runs our model exported to ONNX with the same
weights (ONNX Runtime, OpenVINO)::

    peers:
      - {source: torchvision, name: resnet50, share_weights: true}
      - {source: timm, name: resnet50}
      - onnxruntime                                      # = {source: onnxruntime}
      - {source: openvino, kwargs: {ENABLE_CPU_PINNING: false}}

A model's ``mode: train_step`` makes its rows training steps (forward, loss, backward, SGD update
as the training tool does them) whatever the config's ``mode``.
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


#: Peers that are reference implementations (``name`` is their model name).
MODEL_SOURCES = ("torchvision", "timm")
#: Peers that run our model exported to ONNX, same weights (no ``name``).
RUNTIME_SOURCES = ("onnxruntime", "openvino")
PEER_SOURCES = MODEL_SOURCES + RUNTIME_SOURCES


class PeerSpec(_Section):
    """A reference implementation of the same architecture, or a runtime running our model, measured
    side by side (in turns) with it."""

    source: Literal["torchvision", "timm", "onnxruntime", "openvino"]
    name: str | None = Field(
        default=None,
        description="torchvision builder (resnet50, fasterrcnn_resnet50_fpn, ...) or timm model name; "
        "none for onnxruntime/openvino (they run our model exported to ONNX)",
    )
    memory_format: Literal["contiguous", "channels_last"] = "channels_last"
    kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="torchvision/timm: extra builder arguments; onnxruntime: session config entries "
        "(add_session_config_entry); openvino: compile properties (on top of the defaults)",
    )
    share_weights: bool = Field(
        default=False, description="load the peer's random weights into our model (same outputs, same post-processing load); "
        "runtimes always run our weights"
    )

    @property
    def is_runtime(self) -> bool:
        return self.source in RUNTIME_SOURCES

    @property
    def label(self) -> str:
        if self.is_runtime:
            return self.source
        suffix = ", channels_last" if self.memory_format == "channels_last" else ""
        return f"{self.source}:{self.name}{suffix}"

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        """``onnxruntime`` / ``openvino`` alone name a runtime peer; an unknown source gets a
        did-you-mean."""
        if isinstance(data, str):
            data = {"source": data}
        if isinstance(data, dict) and "source" in data and data["source"] not in PEER_SOURCES:
            source = data["source"]
            raise ValueError(f"unknown peer {source!r}{_close(source, PEER_SOURCES)} "
                             f"(peers: {', '.join(PEER_SOURCES)})")
        return data

    @model_validator(mode="after")
    def _known(self) -> "PeerSpec":
        if self.is_runtime:
            ignored = sorted({"name", "memory_format", "share_weights"} & self.model_fields_set)
            if ignored:
                raise ValueError(f"a {self.source} peer runs our model exported to ONNX, with our weights; "
                                 f"it takes no {', '.join(repr(k) for k in ignored)}")
            return self
        if not self.name:
            raise ValueError(f"a {self.source} peer needs 'name' (the {self.source} model to build)")
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
    optimize: bool = Field(
        default=True, description="inference: apply optimize_for_inference (heads' for detectors and segmenters); "
        "train_step: the training tool's CPU speed-up (train.fast_roi_align: detectors' RoI-align as a gather)"
    )
    compile: bool = Field(default=False, description="torch.compile the model (after optimizing)")
    onednn_graph: bool = Field(
        default=False, description="inference on the CPU: run the model as backbones.OneDnnGraph (a frozen "
        "TorchScript trace with oneDNN Graph fusion; opt-in, TorchScript is deprecated upstream) instead of "
        "optimize_for_inference; trunks and FPN backbones"
    )
    memory_format: Literal["contiguous", "channels_last"] | None = Field(
        default=None, description="override the config's memory_format for this model"
    )
    mode: Literal["inference", "train_step"] | None = Field(
        default=None, description="override the config's mode for this model's rows"
    )
    amp: Literal["none", "bf16", "fp16"] | None = Field(
        default=None, description="override the config's amp for this model's rows (train_step)"
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
    def _graph_options(self) -> "ModelSpec":
        if self.onednn_graph and self.type not in ("backbone", "fpn_backbone"):
            raise ValueError(f"onednn_graph runs trunks and FPN backbones, not a {self.type} (see backbones.OneDnnGraph)")
        if self.onednn_graph and self.compile:
            raise ValueError("onednn_graph and compile are two ways to compile the model; choose one")
        if self.onednn_graph and not self.optimize:
            raise ValueError("onednn_graph folds the norms as optimize does (it replaces optimize_for_inference); "
                             "optimize: false would be ignored: leave it out")
        return self

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
    amp: Literal["none", "bf16", "fp16"] = Field(
        default="none", description="train_step: autocast dtype, as the training tool's train.amp (none: fp32); "
        "channels-last then follows the training tool's choice unless a model sets memory_format"
    )
    memory_format: Literal["contiguous", "channels_last"] = Field(
        default="channels_last", description="memory format of our models' weights and inputs"
    )
    device: str = "cpu"
    warmup: int = Field(default=2, ge=0)
    repeats: int = Field(default=10, ge=1)
    threads: int | None = Field(default=None, ge=1, description="torch CPU threads (default: torch's)")
    keep_freed_memory: bool = Field(
        default=True, description="CPU: backbones.keep_freed_memory() before measuring (glibc's malloc keeps freed "
        "memory instead of faulting it in again on every forward pass; every row and peer of the process gains). "
        "false leaves it off only in a process that has not made the call: isolate the rows"
    )
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

    @model_validator(mode="after")
    def _amp_needs_fp32(self) -> "BenchConfig":
        """amp autocasts training steps of a float32 model; on inference rows it would be ignored."""
        modes = {self.mode_of(spec) for spec in self.models}
        if self.amp != "none" and "train_step" not in modes:
            raise ValueError(f"amp {self.amp} applies to train_step rows; this config has none")
        for i, spec in enumerate(self.models):
            if (spec.amp or "none") != "none" and self.mode_of(spec) != "train_step":
                raise ValueError(f"models.{i} ({spec.name}): amp {spec.amp} applies to train_step rows; "
                                 f"this model's rows are {self.mode_of(spec)}")
            if self.amp_of(spec) != "none" and self.dtype != "float32":
                raise ValueError(f"models.{i} ({spec.name}): amp {self.amp_of(spec)} autocasts a float32 model; "
                                 f"set dtype float32 (got {self.dtype})")
        return self

    @model_validator(mode="after")
    def _onednn_graph_on_cpu_inference(self) -> "BenchConfig":
        """onednn_graph replaces optimize_for_inference on the CPU; elsewhere it would be ignored."""
        for i, spec in enumerate(self.models):
            if spec.onednn_graph and (self.mode_of(spec) != "inference" or self.device != "cpu"):
                raise ValueError(f"models.{i} ({spec.name}): onednn_graph applies to inference rows on the cpu; "
                                 f"this model's rows are {self.mode_of(spec)} on {self.device}")
        return self

    def mode_of(self, spec: ModelSpec) -> str:
        """The mode of ``spec``'s rows (its own, else the config's)."""
        return spec.mode or self.mode

    def amp_of(self, spec: ModelSpec) -> str:
        """The autocast of ``spec``'s training steps (its own, else the config's)."""
        return spec.amp or self.amp


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
