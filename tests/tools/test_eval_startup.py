"""``tools/eval_coco.py`` scores a results file without loading torch or albumentations (they
made ``--help`` take seconds), through the lazily importing ``backbones_tools.data`` and ``backbones_tools.evaluation``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROBE = """
import sys
from backbones_tools import eval_coco
try:
    status = eval_coco.main(sys.argv[1:])
except SystemExit as stop:  # --help
    status = stop.code
heavy = sorted(m for m in ("torch", "albumentations", "cv2", "torchvision") if m in sys.modules)
print("HEAVY", heavy, "STATUS", status)
"""


def _run(*args: str) -> str:
    out = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    return out.stdout


def test_results_mode_and_help_import_no_torch(tmp_path: Path) -> None:
    gt = {"images": [{"id": 1, "width": 50, "height": 40, "file_name": "1.jpg"}],
          "categories": [{"id": 1, "name": "a"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 10], "area": 200,
                           "iscrowd": 0}]}
    results = [{"image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 10], "score": 0.9}]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(results))
    out = _run("--gt", str(tmp_path / "gt.json"), "--results", str(tmp_path / "res.json"))
    assert "AP=100.00" in out and "HEAVY [] STATUS 0" in out
    help_out = _run("--help")
    assert "--checkpoint" in help_out and "HEAVY [] STATUS 0" in help_out
    help_run = subprocess.run([sys.executable, "tools/eval_coco.py", "--help"], cwd=REPO, capture_output=True,
                              text=True, timeout=120)
    assert help_run.returncode == 0 and "--checkpoint" in help_run.stdout
