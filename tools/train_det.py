"""Train a detector (Faster R-CNN, RetinaNet, FCOS, Mask R-CNN) from a YAML config.

    python tools/train_det.py                      # CPU demo on the embedded shapes dataset
    python tools/train_det.py --config configs/det/faster_rcnn_r50_fpn_1x_coco.yaml \
        --data-root /data/coco --set model.backbone.weights=/weights/resnet50.pth
    torchrun --nproc_per_node=8 tools/train_det.py --config ... [--resume]
"""

from __future__ import annotations

import sys

if __package__ in (None, ""):  # run as a file (python tools/x.py): tools/ itself must not shadow
    sys.path.pop(0)            # top-level modules; the package is imported as backbones_tools

from backbones_tools.engine.cli import main_det as main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
