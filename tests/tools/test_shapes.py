"""The embedded shapes dataset: deterministic, cached, and with the properties training needs."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import numpy as np
import pytest
from backbones_tools.data import SHAPES_CATEGORIES, ShapesParams, make_shapes_dataset
from pycocotools import mask as mask_utils

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _digest(root) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_bytes_twice(tmp_path):
    a = make_shapes_dataset(tmp_path / "a", num_train=5, num_val=3, seed=7)
    b = make_shapes_dataset(tmp_path / "b", num_train=5, num_val=3, seed=7)
    c = make_shapes_dataset(tmp_path / "c", num_train=5, num_val=3, seed=8)
    da, db = _digest(a.root), _digest(b.root)
    assert len(da) == 5 + 3 + 3 and da == db
    assert _digest(c.root) != da


def test_cached_and_regenerated_on_new_parameters(tmp_path):
    ds = make_shapes_dataset(tmp_path, num_train=3, num_val=2, seed=1)
    stamp = ds.train_annotations.stat().st_mtime_ns
    again = make_shapes_dataset(tmp_path, num_train=3, num_val=2, seed=1)
    assert again.train_annotations.stat().st_mtime_ns == stamp
    manifest = json.loads(ds.manifest.read_text())
    assert manifest["params"]["seed"] == 1 and manifest["files"] == {"train2017": 3, "val2017": 2}
    make_shapes_dataset(tmp_path, num_train=4, num_val=2, seed=1)
    assert len(list(ds.train_images.iterdir())) == 4
    assert json.loads(ds.manifest.read_text())["params"]["num_train"] == 4


def test_refuses_to_overwrite_foreign_folder(tmp_path):
    (tmp_path / "train2017").mkdir()
    (tmp_path / "train2017" / "mine.jpg").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        make_shapes_dataset(tmp_path, num_train=2, num_val=1)


def test_defaults_meet_the_training_requirements():
    p = ShapesParams()
    assert len(SHAPES_CATEGORIES) >= 3 and p.num_val >= 100 and p.image_size == 256
    assert (p.min_objects, p.max_objects) == (1, 6)
    assert (p.min_object_size, p.max_object_size) == (8.0, 96.0)


def test_stated_properties(shapes_dataset):
    for split_ann, n_images in ((shapes_dataset.train_annotations, 24),
                                (shapes_dataset.val_annotations, 100)):
        gt = json.loads(split_ann.read_text())
        assert len(gt["images"]) == n_images
        assert [c["name"] for c in gt["categories"]] == ["circle", "triangle", "rectangle", "star"]
        plain = [a for a in gt["annotations"] if not a["iscrowd"]]
        per_image = Counter(a["image_id"] for a in plain)
        assert set(per_image) == {img["id"] for img in gt["images"]}
        assert 1 <= min(per_image.values()) and max(per_image.values()) <= 6
        sizes = [max(a["bbox"][2:]) for a in plain if isinstance(a["segmentation"], list)]
        assert 7 <= min(sizes) and max(sizes) <= 97
        info = {img["id"]: img for img in gt["images"]}
        owner: dict[int, np.ndarray] = {}
        for a in gt["annotations"]:
            h, w = info[a["image_id"]]["height"], info[a["image_id"]]["width"]
            assert min(h, w) == 256
            seg = a["segmentation"]
            rle = mask_utils.frPyObjects(seg, h, w)[0] if isinstance(seg, list) else seg
            m = mask_utils.decode(rle).astype(bool)
            assert a["area"] == m.sum() and a["bbox"] == list(mask_utils.toBbox(rle))
            # occlusion respected: no pixel belongs to two annotations of an image
            seen = owner.setdefault(a["image_id"], np.zeros((h, w), bool))
            assert not (seen & m).any()
            seen |= m
    val = json.loads(shapes_dataset.val_annotations.read_text())
    assert Counter(c for a in val["annotations"] for c in [a["category_id"]]).keys() == {1, 2, 3, 4}
    assert any(a["iscrowd"] for a in val["annotations"])
    occluded = [a for a in val["annotations"] if not a["iscrowd"] and isinstance(a["segmentation"], dict)]
    assert len(occluded) >= 5  # overlaps happen, stored as RLE of the visible part
    assert len({(img["width"], img["height"]) for img in val["images"]}) >= 2


def test_smallest_allowed_image_size_generates(tmp_path):
    """``data.shapes.image_size`` admits 32 px: crowd regions must fit such images too (the
    generator drew their centre from an empty range below 60 px)."""
    root = tmp_path / "tiny"
    make_shapes_dataset(root, 40, 1, 0, image_size=32, min_object_size=4.0, max_object_size=12.0)
    data = json.loads((root / "annotations" / "instances_train2017.json").read_text())
    assert len(data["images"]) == 40 and any(a["iscrowd"] for a in data["annotations"])
