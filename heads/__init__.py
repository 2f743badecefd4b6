"""Task heads and whole models on this package's backbones.

``build_detector`` returns stock torchvision detectors (Faster/Mask/Keypoint R-CNN, RetinaNet,
FCOS) on an FPN backbone; ``build_segmenter`` DeepLabV3/V3+ models returning torchvision's
``{"out", "aux"}`` dict; ``load_torchvision_weights`` loads torchvision checkpoints of either;
``optimize_for_inference`` makes any of them fast for inference (``backbones``' folding and fusion,
plus the detectors' RoI-align as a gather, see ``heads.inference``).
"""

from .detection import build_detector, counts_background
from .inference import (
    ChannelsLastTwoMLPHead,
    GatherMultiScaleRoIAlign,
    optimize_for_inference,
    use_channels_last_box_head,
    use_gather_roi_align,
)
from .segmentation import DeepLabV3, DeepLabV3Plus, build_segmenter, segmentation_loss
from .weights import load_torchvision_weights

__all__ = [
    "ChannelsLastTwoMLPHead",
    "DeepLabV3",
    "DeepLabV3Plus",
    "GatherMultiScaleRoIAlign",
    "build_detector",
    "build_segmenter",
    "counts_background",
    "load_torchvision_weights",
    "optimize_for_inference",
    "segmentation_loss",
    "use_channels_last_box_head",
    "use_gather_roi_align",
]
