"""Run a detection or segmentation training checkpoint over images (logic: tools/engine/predict.py).

    python tools/predict.py --checkpoint runs/det/<run>/best.pth --images val2017/ [--out pred/] \
        [--gt instances_val2017.json] [--batch-size 4] [--device auto|cpu|cuda] [--score-thresh 0.5] \
        [--max-size 800] [--no-draw] [--config c.yaml] [--set KEY=VALUE]
"""

from __future__ import annotations

import sys

if __package__ in (None, ""):  # run as a file (python tools/x.py): tools/ itself must not shadow
    sys.path.pop(0)            # top-level modules; the package is imported as backbones_tools

from backbones_tools.engine.predict import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
