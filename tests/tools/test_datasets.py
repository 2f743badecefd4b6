"""COCO datasets: targets match the JSON, augmentation keeps boxes and masks consistent, and bad
input is reported clearly."""

from __future__ import annotations

import json
import logging

import albumentations as A
import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

from backbones_tools.data import (
    VOC_COCO_CATEGORY_IDS,
    CategoryMap,
    CocoDetection,
    CocoFormatError,
    CocoSemantic,
    DetectionTransform,
    ImageLoadError,
    build_detection_transforms,
    build_segmentation_transforms,
    draw_instances,
)


def _mask_box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def _write_dataset(tmp_path, anns, images=None, categories=None, size=(40, 60)):
    """Tiny handcrafted dataset: images 1 and 2 (h=40, w=60) and the given annotations."""
    h, w = size
    img_dir = tmp_path / "img"
    img_dir.mkdir(exist_ok=True)
    images = images or [{"id": 1, "file_name": "a.png", "height": h, "width": w},
                        {"id": 2, "file_name": "b.png", "height": h, "width": w}]
    for info in images:
        if not (img_dir / info["file_name"]).exists():
            Image.new("RGB", (info["width"], info["height"]), (90, 90, 90)).save(
                img_dir / info["file_name"])
    data = {"images": images, "annotations": anns,
            "categories": categories or [{"id": 1, "name": "a"}, {"id": 5, "name": "b"}]}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return img_dir, path


def _square(ann_id, image_id, cat, x, y, s, crowd=0):
    poly = [x, y, x + s, y, x + s, y + s, x, y + s]
    return {"id": ann_id, "image_id": image_id, "category_id": cat, "bbox": [x, y, s, s],
            "area": float(s * s), "iscrowd": crowd, "segmentation": [poly]}


# ------------------------------------------------------------------ round trip on the shapes set


def test_targets_and_drawing_match_json(shapes_dataset):
    ds = CocoDetection(shapes_dataset.val_images, shapes_dataset.val_annotations, return_masks=True)
    gt = json.loads(shapes_dataset.val_annotations.read_text())
    cats = {c["id"] for c in gt["categories"]}
    assert ds.category_map.category_ids == tuple(sorted(cats))
    by_image: dict[int, list] = {}
    for a in gt["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    for idx in range(8):
        image, target = ds[idx]
        anns = [a for a in by_image.get(ds.ids[idx], []) if not a["iscrowd"]]
        h, w = image.shape[-2:]
        assert image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
        assert target["image_id"] == ds.ids[idx]
        expected = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                                  a["bbox"][1] + a["bbox"][3]] for a in anns]).reshape(-1, 4)
        assert torch.equal(target["boxes"], expected)
        assert target["labels"].tolist() == [ds.category_map.label(a["category_id"]) for a in anns]
        # masks drawn by the visualiser (alpha 1, white on black) cover exactly the JSON masks
        canvas = torch.zeros(3, h, w, dtype=torch.uint8)
        drawn = draw_instances(canvas, masks=target["masks"], colour=(255, 255, 255), alpha=1.0)
        union = np.zeros((h, w), bool)
        for a in anns:
            union |= mask_utils.decode(mask_utils.merge(
                mask_utils.frPyObjects(a["segmentation"], h, w))).astype(bool) if isinstance(
                a["segmentation"], list) else mask_utils.decode(a["segmentation"]).astype(bool)
        assert np.array_equal(drawn[0].numpy() == 255, union)
        # boxes drawn by the visualiser have their corners at the JSON box corners
        drawn = draw_instances(canvas, boxes=target["boxes"], colour=(255, 255, 255), width=1)
        for a in anns:
            x, y = int(a["bbox"][0]), int(a["bbox"][1])
            assert drawn[0, y, x] == 255


def test_crowd_not_a_target(shapes_dataset):
    gt = json.loads(shapes_dataset.val_annotations.read_text())
    crowd_images = {a["image_id"] for a in gt["annotations"] if a["iscrowd"]}
    assert crowd_images, "the shapes val split should contain crowd regions"
    ds = CocoDetection(shapes_dataset.val_images, shapes_dataset.val_annotations)
    img_id = min(crowd_images)
    n_plain = sum(1 for a in gt["annotations"] if a["image_id"] == img_id and not a["iscrowd"])
    _, target = ds[ds.ids.index(img_id)]
    assert len(target["boxes"]) == n_plain


def test_horizontal_flip_moves_boxes_and_masks_together(shapes_dataset):
    plain = CocoDetection(shapes_dataset.val_images, shapes_dataset.val_annotations, return_masks=True)
    flipped = CocoDetection(shapes_dataset.val_images, shapes_dataset.val_annotations,
                            DetectionTransform([A.HorizontalFlip(p=1.0)]), return_masks=True)
    checked = 0
    for idx in range(6):
        img0, t0 = plain[idx]
        img1, t1 = flipped[idx]
        w = img0.shape[-1]
        assert torch.equal(img1, img0.flip(-1))
        assert torch.equal(t1["masks"], t0["masks"].flip(-1))
        b = t0["boxes"]
        assert torch.allclose(t1["boxes"], torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], 1))
        for m, box in zip(t1["masks"].numpy(), t1["boxes"].tolist()):
            assert _mask_box(m) == pytest.approx(box)  # mask and box still agree after the flip
            checked += 1
        # the shapes (triangles, stars) are not mirror-symmetric: the flip really changed masks
    assert checked > 5


def test_train_pipeline_keeps_boxes_and_masks_consistent(shapes_dataset):
    ds = CocoDetection(shapes_dataset.train_images, shapes_dataset.train_annotations,
                       build_detection_transforms(train=True), return_masks=True)
    for idx in range(6):
        image, target = ds[idx]
        h, w = image.shape[-2:]
        assert min(h, w) in (224, 256, 288, 320)
        assert target["masks"].shape == (len(target["boxes"]), h, w)
        boxes = target["boxes"]
        assert (boxes[:, 2:] - boxes[:, :2] >= 1).all()
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        for m, box in zip(target["masks"].numpy(), boxes.tolist()):
            assert np.allclose(_mask_box(m), box, atol=2.5)


def test_semantic_dataset_on_shapes(shapes_dataset):
    ds = CocoSemantic(shapes_dataset.val_images, shapes_dataset.val_annotations,
                      build_segmentation_transforms(train=True, crop_size=96))
    image, mask = ds[0]
    assert image.shape == (3, 96, 96) and mask.shape == (96, 96) and mask.dtype == torch.int64
    assert set(mask.unique().tolist()) <= {0, 1, 2, 3, 4, 255}
    assert len(VOC_COCO_CATEGORY_IDS) == 20


# ------------------------------------------------------------------ handcrafted targets


def test_flip_of_right_triangle(tmp_path):
    """Right angle at the bottom-left before the flip, at the bottom-right after it."""
    tri = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 10, 20, 20], "area": 200.0,
           "iscrowd": 0, "segmentation": [[4, 10, 4, 30, 24, 30]]}
    img_dir, path = _write_dataset(tmp_path, [tri])
    ds = CocoDetection(img_dir, path, DetectionTransform([A.HorizontalFlip(p=1.0)]), return_masks=True)
    _, t = ds[0]
    m = t["masks"][0]
    assert t["boxes"][0].tolist() == [60 - 24, 10, 60 - 4, 30]
    assert m[28, 60 - 6] == 1 and m[28, 60 - 22] == 1  # bottom row: full width
    assert m[12, 60 - 5] == 1 and m[12, 60 - 22] == 0  # near the top only the right side


def test_degenerate_boxes_dropped_and_logged(tmp_path, caplog):
    anns = [_square(1, 1, 1, 5, 5, 10),
            {**_square(2, 1, 1, 5, 5, 10), "bbox": [5, 5, 0, 10]},    # zero width
            {**_square(3, 1, 5, 5, 5, 10), "bbox": [20, 5, -4, 10]},  # negative width
            _square(4, 2, 5, 5, 5, 10, crowd=1)]                      # image 2: crowd only
    img_dir, path = _write_dataset(tmp_path, anns)
    with caplog.at_level(logging.WARNING):
        ds = CocoDetection(img_dir, path)
    assert ds.num_dropped_boxes == 2
    assert "dropped 2 annotations" in caplog.text and "[2, 3]" in caplog.text
    assert len(ds) == 2  # evaluation never drops images
    _, target = ds[1]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert len(CocoDetection(img_dir, path, skip_empty=True)) == 1  # training may


def test_labels_follow_category_map_round_trip(tmp_path):
    img_dir, path = _write_dataset(tmp_path, [_square(1, 1, 5, 2, 2, 8), _square(2, 1, 1, 20, 2, 8)])
    ds = CocoDetection(img_dir, path)
    assert ds[0][1]["labels"].tolist() == [2, 1]
    restored = CategoryMap.from_dict(json.loads(json.dumps(ds.category_map.to_dict())))
    assert restored == ds.category_map and restored.category_id(2) == 5 and restored.name(2) == "b"


def test_semantic_overlap_and_crowd_are_ignored(tmp_path):
    anns = [_square(1, 1, 1, 0, 0, 10), _square(2, 1, 5, 5, 5, 10),  # overlap on [5:10, 5:10]
            _square(3, 1, 1, 30, 20, 6, crowd=1)]
    img_dir, path = _write_dataset(tmp_path, anns)
    ds = CocoSemantic(img_dir, path, build_segmentation_transforms(train=False, normalize=False))
    _, mask = ds[0]
    assert mask[1, 1] == 1 and mask[12, 12] == 2 and mask[7, 7] == 255 and mask[22, 32] == 255
    assert mask[35, 55] == 0
    only_b = CocoSemantic(img_dir, path, categories=["b"])
    m = only_b.semantic_mask(1)
    assert m[1, 1] == 0 and m[7, 7] == 1 and m[12, 12] == 1 and m[22, 32] == 0


# ------------------------------------------------------------------ bad input


def test_missing_annotation_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        CocoDetection(tmp_path, tmp_path / "missing.json")


def test_malformed_json(tmp_path):
    (tmp_path / "bad.json").write_text('{"images": [1, 2,,]}')
    with pytest.raises(CocoFormatError, match=r"bad.json: malformed JSON at line 1"):
        CocoDetection(tmp_path, tmp_path / "bad.json")


def test_missing_top_level_key(tmp_path):
    (tmp_path / "x.json").write_text('{"images": [], "annotations": []}')
    with pytest.raises(CocoFormatError, match="categories"):
        CocoDetection(tmp_path, tmp_path / "x.json")


def test_annotation_referencing_missing_image(tmp_path):
    img_dir, path = _write_dataset(tmp_path, [_square(7, 99, 1, 0, 0, 5)])
    with pytest.raises(CocoFormatError, match="annotation 7 references image id 99"):
        CocoDetection(img_dir, path)


def test_category_not_in_categories(tmp_path):
    img_dir, path = _write_dataset(tmp_path, [_square(3, 1, 42, 0, 0, 5)])
    with pytest.raises(CocoFormatError, match="annotation 3 has category id 42"):
        CocoDetection(img_dir, path)


def test_missing_and_corrupt_image_files(tmp_path, caplog):
    img_dir, path = _write_dataset(tmp_path, [_square(1, 1, 1, 0, 0, 5)])
    (img_dir / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    ds = CocoDetection(img_dir, path)
    with pytest.raises(ImageLoadError, match="a.png"):
        ds[0]
    (img_dir / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match="b.png"):
        ds[1]
    Image.new("RGB", (60, 40)).save(img_dir / "b.png")
    skipping = CocoDetection(img_dir, path, skip_unreadable=True)
    with caplog.at_level(logging.WARNING):
        _, target = skipping[0]
    assert target["image_id"] == 2 and skipping.num_unreadable == 1 and "a.png" in caplog.text


def test_image_size_mismatch_is_reported(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "height": 41, "width": 60}]
    (tmp_path / "img").mkdir()
    Image.new("RGB", (60, 40)).save(tmp_path / "img" / "a.png")
    img_dir, path = _write_dataset(tmp_path, [], images=images)
    with pytest.raises(CocoFormatError, match="a.png: decoded size 60x40"):
        CocoDetection(img_dir, path)[0]
