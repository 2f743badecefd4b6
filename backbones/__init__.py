"""ResNet / ResNeXt / Res2Net backbones for detection and segmentation.

``create_backbone(name, out_features=..., weights=..., **options)`` builds a trunk that returns
``{tap: feature_map}`` with known channels and strides (``feature_info``); ``list_backbones()``
names the variants; ``load_weights`` loads torchvision, timm, official Res2Net, detectron2 and
MMDetection checkpoints; ``optimize_for_inference`` folds the norms into the convolutions and fuses
ReLUs and residual adds for fast inference (detectors: ``heads.optimize_for_inference``), and
``keep_freed_memory`` stops the CPU allocator from faulting every activation in again. The
private torch APIs this relies on are in ``backbones.compat``.
"""

from .blocks import BasicBlock, Bottle2neck, Bottleneck
from .converters import FORMATS as WEIGHT_FORMATS
from .cpu_memory import keep_freed_memory
from .fpn import FPNBackbone, create_fpn_backbone
from .inference import FusedConv2d, FusedStage, OneDnnLinear, fold_batch_norms, optimize_for_inference
from .onednn_graph import OneDnnGraph
from .trunk import TAPS, FeatureInfo, ResNet
from .timm_models import register_timm_model, register_timm_models
from .variants import OPTIONS, VARIANTS, UnknownBackboneError, create_backbone, get_variant, list_backbones
from .weights import (
    LoadReport,
    WeightsFileError,
    WeightsMismatchError,
    adapt_input_conv,
    load_matching,
    load_weights,
    read_state_dict,
)

__all__ = [
    "BasicBlock",
    "Bottle2neck",
    "Bottleneck",
    "FPNBackbone",
    "FusedConv2d",
    "FusedStage",
    "FeatureInfo",
    "LoadReport",
    "OPTIONS",
    "OneDnnGraph",
    "OneDnnLinear",
    "ResNet",
    "TAPS",
    "UnknownBackboneError",
    "VARIANTS",
    "WEIGHT_FORMATS",
    "WeightsFileError",
    "WeightsMismatchError",
    "adapt_input_conv",
    "create_backbone",
    "create_fpn_backbone",
    "fold_batch_norms",
    "get_variant",
    "keep_freed_memory",
    "list_backbones",
    "load_matching",
    "load_weights",
    "optimize_for_inference",
    "read_state_dict",
    "register_timm_model",
    "register_timm_models",
]
