from .segmentation import DeepLabV3, DeepLabV3Plus, build_segmenter, segmentation_loss
