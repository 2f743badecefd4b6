"""Run a detection or segmentation training checkpoint over images (logic: tools/engine/predict.py).

    python tools/predict.py --checkpoint runs/det/<run>/best.pth --images val2017/ [--out pred/] \
        [--gt instances_val2017.json] [--batch-size 4] [--device auto|cpu|cuda] [--score-thresh 0.5] \
        [--max-size 800] [--no-draw] [--config c.yaml] [--set KEY=VALUE]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.engine.predict import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
