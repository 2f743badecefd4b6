"""Task heads and whole models on this package's backbones.

``build_detector`` returns stock torchvision detectors (Faster/Mask/Keypoint R-CNN, RetinaNet,
FCOS) on an FPN backbone; ``build_segmenter`` DeepLabV3/V3+ models returning torchvision's
``{"out", "aux"}`` dict; ``load_torchvision_weights`` loads torchvision checkpoints of either.
"""

from .detection import build_detector, counts_background
from .segmentation import DeepLabV3, DeepLabV3Plus, build_segmenter, segmentation_loss
from .weights import load_torchvision_weights

__all__ = [
    "DeepLabV3",
    "DeepLabV3Plus",
    "build_detector",
    "build_segmenter",
    "counts_background",
    "load_torchvision_weights",
    "segmentation_loss",
]
