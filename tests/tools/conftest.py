"""Shared fixtures for the tools tests: one small shapes dataset and one synthetic eval set."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _coco_synth import make_gt_and_detections  # noqa: E402
from backbones_tools.data.shapes import ShapesDataset, make_shapes_dataset  # noqa: E402


@pytest.fixture(scope="session")
def shapes_dataset(tmp_path_factory: pytest.TempPathFactory) -> ShapesDataset:
    """A small shapes dataset (24 train / 100 val images), generated once per session."""
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), num_train=24, num_val=100, seed=0)


@pytest.fixture(scope="session")
def synthetic_eval(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """500 images, ~2,000 GT objects, 22,000 bbox + 22,000 segm detections, and the GT path."""
    gt, bbox, segm = make_gt_and_detections(num_images=500, dets_per_image=44, seed=0)
    path = tmp_path_factory.mktemp("synth") / "gt.json"
    path.write_text(json.dumps(gt), encoding="utf-8")
    return {"gt": gt, "gt_path": path, "bbox": bbox, "segm": segm}
