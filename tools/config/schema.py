"""Typed schema of a training config (pydantic 2, unknown keys are errors).

One :class:`TrainConfig` describes a detection (``task: det``, :class:`DetTrainConfig`) or
segmentation (``task: seg``, :class:`SegTrainConfig`) run: model, data, optimiser, schedule,
training loop and evaluation. Every section forbids unknown keys, and each task has its own model
and data sections, so a typo, or a field of the other task (``model.aux`` on a detector,
``model.fpn`` on DeepLab, ``data.det_aug`` on a segmenter), fails validation with the key's name.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class BackboneConfig(Section):
    """Trunk options passed to ``backbones.create_backbone``."""

    name: str = "resnet50"
    weights: str | None = Field(
        default=None, description="path or URL of pretrained trunk weights (filled by the user)"
    )
    norm: Literal["BN", "SyncBN", "GN", "FrozenBN"] = "BN"
    norm_eval: bool = False
    frozen_stages: int = Field(default=-1, ge=-1, le=4)
    style: Literal["pytorch", "caffe"] | None = None
    output_stride: Literal[8, 16, 32] | None = None
    multi_grid: list[int] | None = None
    checkpointing: bool = False
    drop_path_rate: float = Field(default=0.0, ge=0.0, lt=1.0)
    zero_init_residual: bool = False
    dcn_stages: list[int] = Field(default_factory=list)

    def create_options(self) -> dict[str, Any]:
        """Keyword options for ``create_backbone`` (unset optional ones left out)."""
        opts = self.model_dump(exclude={"name", "weights"})
        return {k: v for k, v in opts.items() if v is not None}


class FpnConfig(Section):
    """Feature pyramid options (detection only)."""

    out_channels: int = Field(default=256, ge=1)
    norm: Literal["BN", "SyncBN", "GN"] | None = None


class ModelConfig(Section):
    """What detectors and segmenters share: trunk, class count, head options, a whole-model start."""

    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    num_classes: int | None = Field(
        default=None, ge=1,
        description="foreground classes; null takes them from the dataset's categories",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="extra keyword arguments of heads.build_detector / heads.build_segmenter",
    )
    weights: str | None = Field(
        default=None, description="checkpoint of the whole model to start from (fine-tuning)"
    )


class DetModelConfig(ModelConfig):
    """A torchvision detector on an FPN over the trunk."""

    kind: Literal["faster_rcnn", "retinanet", "fcos", "mask_rcnn"]
    fpn: FpnConfig = Field(default_factory=FpnConfig)
    box_head_dim: int | None = Field(
        default=None, ge=1,
        description="R-CNN box head width (TwoMLPHead representation size); null = torchvision's 1024",
    )


class SegModelConfig(ModelConfig):
    """A DeepLabV3 / V3+ segmenter."""

    kind: Literal["deeplabv3", "deeplabv3plus"]
    output_stride: Literal[8, 16] = Field(default=16, description="DeepLab output stride")
    aux: bool = Field(default=False, description="DeepLab auxiliary FCN head on c4")
    aux_weight: float = Field(default=0.5, ge=0.0, description="weight of the auxiliary loss in the total")
    class_balance: float = Field(
        default=0.0, ge=0.0, le=1.0,
        description="DeepLab loss weights per class from the batch's label counts, to this power "
        "(0: plain average; 1: every present class weighs the same)",
    )
    ignore_index: int = Field(
        default=255, ge=1, le=255,
        description="mask label of unlabelled pixels (crowds, overlaps, crop padding): not in the "
        "loss or the metrics; masks are uint8, so 1..255 and above the class count",
    )


class ShapesConfig(Section):
    """Parameters of the embedded synthetic dataset (generated when ``data.root`` lacks it)."""

    num_train: int = Field(default=3000, ge=1)
    num_val: int = Field(default=120, ge=1)
    seed: int = 0
    image_size: int = Field(default=256, ge=32)
    max_objects: int = Field(default=6, ge=1)
    min_object_size: float = Field(default=8.0, gt=0.0)
    max_object_size: float = Field(default=96.0, gt=0.0)


class DetAugConfig(Section):
    """Detection augmentation (see ``backbones_tools.data.build_detection_transforms``)."""

    min_sizes: list[int] = Field(default_factory=lambda: [640, 672, 704, 736, 768, 800])
    max_size: int = 1333
    flip_prob: float = Field(default=0.5, ge=0.0, le=1.0)
    photometric: bool = False


class SegAugConfig(Section):
    """Segmentation augmentation (see ``backbones_tools.data.build_segmentation_transforms``)."""

    base_size: int = 520
    crop_size: int = 480
    scale_range: tuple[float, float] = (0.5, 2.0)
    flip_prob: float = Field(default=0.5, ge=0.0, le=1.0)
    photometric: bool = False
    eval_size: int | None = 520


class DataConfig(Section):
    """Dataset location, splits, batching and augmentation."""

    root: str = "data/coco"
    generate_shapes: bool = Field(
        default=False,
        description="generate the synthetic shapes dataset at root when it is not there",
    )
    shapes: ShapesConfig = Field(default_factory=ShapesConfig)
    train_split: str = "train2017"
    val_split: str = "val2017"
    categories: list[int | str] | None = Field(
        default=None, description="category subset (ids or names) in label order; null = all"
    )
    batch_size: int = Field(default=16, ge=1, description="images per iteration over all processes")
    eval_batch_size: int = Field(default=1, ge=1, description="images per process in evaluation")
    num_workers: int = Field(default=4, ge=0)
    aspect_ratio_grouping: bool = True
    group_factor: int = Field(default=3, ge=0)
    max_train_images: int | None = Field(default=None, ge=1, description="debug: first N images")
    max_val_images: int | None = Field(default=None, ge=1, description="debug: first N images")
    skip_invalid: bool = Field(
        default=False,
        description="leave out the images and annotations the preflight finds faulty (reported, and "
        "val images left out are named in the score) instead of stopping; also skip files that "
        "become unreadable during the run",
    )


class DetDataConfig(DataConfig):
    """Data of a detection run."""

    det_aug: DetAugConfig = Field(default_factory=DetAugConfig)


class SegDataConfig(DataConfig):
    """Data of a segmentation run."""

    seg_aug: SegAugConfig = Field(default_factory=SegAugConfig)


class OptimConfig(Section):
    """Optimiser and parameter groups."""

    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(default=0.02, gt=0.0)
    base_batch_size: int | None = Field(
        default=16, ge=1,
        description="batch size lr is given for; lr scales linearly to data.batch_size (null: no scaling)",
    )
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(default=1e-4, ge=0.0)
    norm_bias_decay: bool = Field(default=False, description="apply weight decay to norms and biases")
    backbone_lr_mult: float = Field(default=1.0, ge=0.0)
    clip_grad_norm: float | None = Field(default=None, gt=0.0)
    fused: bool = Field(default=True, description="torch's fused optimizer kernels (false: foreach)")


class ScheduleConfig(Section):
    """Learning-rate schedule, evaluated every iteration."""

    name: Literal["step", "cosine", "poly", "constant"] = "step"
    horizon: Literal["iters", "time"] = Field(
        default="iters",
        description="cosine/poly decay over the planned iterations, or over train.time_limit_s "
        "(whichever fraction is larger), so a time-budgeted run ends fully decayed on any machine",
    )
    milestones: list[int] = Field(default_factory=lambda: [8, 11], description="epochs (step)")
    gamma: float = Field(default=0.1, gt=0.0)
    power: float = Field(default=0.9, gt=0.0, description="poly exponent")
    min_lr_ratio: float = Field(default=0.0, ge=0.0, le=1.0, description="cosine/poly floor")
    warmup_iters: int = Field(default=1000, ge=0)
    warmup_factor: float = Field(default=0.001, gt=0.0, le=1.0)

    @field_validator("milestones")
    @classmethod
    def _sorted(cls, value: list[int]) -> list[int]:
        if list(value) != sorted(value):
            raise ValueError(f"milestones must be increasing, got {value}")
        return value

    @model_validator(mode="after")
    def _horizon_needs_a_decay(self) -> "ScheduleConfig":
        if self.horizon == "time" and self.name not in ("cosine", "poly"):
            raise ValueError(f"schedule.horizon 'time' applies to cosine and poly, not {self.name!r} "
                             "(step milestones are epochs)")
        return self


class TrainLoopConfig(Section):
    """The training loop."""

    epochs: int = Field(default=12, ge=1)
    max_iters: int | None = Field(
        default=None, ge=1, description="stop after this many iterations in all (debug / tests)"
    )
    time_limit_s: float | None = Field(
        default=None, gt=0.0,
        description="stop training (then evaluate) once this many seconds of training have run",
    )
    seed: int = 0
    deterministic: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "none", "fp16", "bf16"] = Field(
        default="auto",
        description="autocast dtype; auto: bf16 on GPUs that support it (else fp16 with a grad scaler) "
        "and on CPUs with native bf16 (AVX512-BF16/AMX), fp32 on other CPUs (emulated bf16 is ~10x slower)",
    )
    sync_bn: bool = False
    log_every: int = Field(default=20, ge=1)
    grad_norm_per_stage: bool = False
    checkpoint_every_iters: int | None = Field(
        default=None, ge=1, description="also write 'last' every N iterations (mid-epoch resume)"
    )
    eval_every: int = Field(default=1, ge=1, description="evaluate every N epochs (and at the end)")
    num_threads: int | None = Field(default=None, ge=1, description="torch CPU threads per process")
    channels_last: Literal["auto"] | bool = Field(
        default="auto",
        description="train with channels-last weights and activations; auto: on with bf16/fp16 "
        "autocast (faster reduced-precision convs), off in fp32 on a CPU; checkpoints are unaffected",
    )
    fast_roi_align: bool = Field(
        default=True,
        description="detectors: RoI-align as a vectorised gather on CPU (heads.use_gather_roi_align; "
        "same values up to float rounding; the CPU det demo step 0.46 -> 0.30 s); false keeps torchvision's kernel",
    )
    tensorboard: bool = Field(
        default=False,
        description="also write the scalars of metrics.jsonl (train losses, lr, sec_per_iter; eval metrics) "
        "as TensorBoard events to <run folder>/tensorboard/ (rank 0; needs pip install -e \".[tensorboard]\")",
    )


class EvalConfig(Section):
    """Evaluation options."""

    backend: Literal["pycocotools", "faster_coco_eval"] = "pycocotools"
    best_metric: str | None = Field(
        default=None, description="metric choosing the best checkpoint (default bbox/AP or seg/mIoU)"
    )
    visualize: int = Field(default=8, ge=0, description="val images drawn into predictions.png")
    score_thresh: float = Field(default=0.3, ge=0.0, le=1.0, description="drawing threshold")


class TrainConfig(Section):
    """A whole training run; :class:`DetTrainConfig` or :class:`SegTrainConfig` by ``task``
    (:func:`config_class` picks it), so a field of the other task is an unknown key."""

    task: Literal["det", "seg"]
    model: ModelConfig
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainLoopConfig = Field(default_factory=TrainLoopConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    output_dir: str | None = Field(default=None, description="run folder (default runs/<config name>)")

    @model_validator(mode="after")
    def _time_horizon_has_a_budget(self) -> "TrainConfig":
        if self.schedule.horizon == "time" and self.train.time_limit_s is None:
            raise ValueError("schedule.horizon 'time' needs train.time_limit_s (the budget to decay over)")
        return self

    @property
    def best_metric(self) -> str:
        """Metric that selects the best checkpoint."""
        if self.eval.best_metric:
            return self.eval.best_metric
        return "bbox/AP" if self.task == "det" else "seg/mIoU"


class DetTrainConfig(TrainConfig):
    """A detection run (``task: det``)."""

    task: Literal["det"]
    model: DetModelConfig
    data: DetDataConfig = Field(default_factory=DetDataConfig)


class SegTrainConfig(TrainConfig):
    """A segmentation run (``task: seg``)."""

    task: Literal["seg"]
    model: SegModelConfig
    data: SegDataConfig = Field(default_factory=SegDataConfig)


CONFIG_CLASSES: dict[str, type[TrainConfig]] = {"det": DetTrainConfig, "seg": SegTrainConfig}


class SchemaChoiceError(ValueError):
    """``task`` or ``model.kind`` names no schema; :attr:`key` is the one at fault."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def config_class(data: Any) -> type[TrainConfig]:
    """The schema of a config dict, by its ``task``; a missing or unknown task, or a
    ``model.kind`` of the other task, is a :class:`SchemaChoiceError`."""
    task = data.get("task") if isinstance(data, dict) else None
    if not isinstance(task, str) or task not in CONFIG_CLASSES:
        got = "missing" if task is None else f"got {task!r}"
        raise SchemaChoiceError("task", f"task: must be one of {', '.join(CONFIG_CLASSES)} ({got})")
    kind = data["model"].get("kind") if isinstance(data.get("model"), dict) else None
    kinds = get_args(CONFIG_CLASSES[task].model_fields["model"].annotation.model_fields["kind"].annotation)
    if isinstance(kind, str) and kind not in kinds:
        raise SchemaChoiceError("model.kind", f"model.kind {kind!r} is not a {task} model; choose one of {kinds}")
    return CONFIG_CLASSES[task]


DET_KINDS: tuple[str, ...] = get_args(DetModelConfig.model_fields["kind"].annotation)
SEG_KINDS: tuple[str, ...] = get_args(SegModelConfig.model_fields["kind"].annotation)
