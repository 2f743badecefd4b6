"""DeepLab segmentation heads: ASPP, DeepLabV3, DeepLabV3+, the builder and the training loss.

``build_segmenter("deeplabv3plus", backbone="resnet50", num_classes=21, output_stride=16)`` returns
a module whose ``forward(x)`` gives ``{"out": logits}`` (+ ``"aux"``) like torchvision's models.
"""

from .aspp import ASPP, DEFAULT_ATROUS_RATES, ASPPPooling, default_atrous_rates
from .builder import SEGMENTER_KINDS, SEGMENTER_OUTPUT_STRIDES, build_segmenter
from .deeplab import DeepLabV3, DeepLabV3Head, DeepLabV3Plus, DeepLabV3PlusHead
from .loss import segmentation_loss
from .norm import FallbackBatchNorm2d

__all__ = [
    "ASPP",
    "ASPPPooling",
    "DEFAULT_ATROUS_RATES",
    "DeepLabV3",
    "DeepLabV3Head",
    "DeepLabV3Plus",
    "DeepLabV3PlusHead",
    "FallbackBatchNorm2d",
    "SEGMENTER_KINDS",
    "SEGMENTER_OUTPUT_STRIDES",
    "build_segmenter",
    "default_atrous_rates",
    "segmentation_loss",
]
