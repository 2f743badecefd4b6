from .detection import build_detector
from .segmentation import DeepLabV3, DeepLabV3Plus, build_segmenter, segmentation_loss
from .weights import load_torchvision_weights
