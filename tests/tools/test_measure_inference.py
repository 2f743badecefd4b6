"""``tools/measure_inference.py``, the README's command for the inference levers, runs and reports each."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_lever_is_reported() -> None:
    out = subprocess.run([sys.executable, "tools/measure_inference.py", "--model", "resnet18", "--batch", "1",
                          "--size", "32", "--rounds", "1", "--onednn-graph"], cwd=REPO, capture_output=True, text=True, timeout=300,
                         check=True).stdout
    for line in ("glibc defaults", "keep_freed_memory()", "in-place residual adds", "weights reordered once",
                 "fc6 1000x12544 -> 1024", "box head, 1000 RoIs", "3x3 256 ch on 1x200x200", "Winograd transforms: ", "oneDNN graph"):
        assert line in out, out
    assert "page faults per forward pass" in out and "max abs diff" in out
