"""Evaluator input problems are reported with a clear message, never mis-scored silently."""

from __future__ import annotations

import copy

import pytest
import torch
from backbones_tools.data import CocoFormatError
from backbones_tools.evaluation import CocoEvaluator


def _gt():
    return {
        "images": [{"id": 1, "file_name": "1.png", "height": 50, "width": 60},
                   {"id": 2, "file_name": "2.png", "height": 50, "width": 60}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 20, 20], "area": 400.0,
             "iscrowd": 0, "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]]},
            {"id": 2, "image_id": 2, "category_id": 4, "bbox": [0, 0, 40, 40], "area": 1600.0,
             "iscrowd": 0, "segmentation": [[0, 0, 40, 0, 40, 40, 0, 40]]},
        ],
        "categories": [{"id": 3, "name": "c3"}, {"id": 4, "name": "c4"}],
    }


def _det(image_id=1, category_id=3, bbox=(10, 10, 20, 20), score=0.9):
    return {"image_id": image_id, "category_id": category_id, "bbox": list(bbox), "score": score}


def test_perfect_detections_score_one():
    ev = CocoEvaluator(_gt())
    ev.add_results([_det(), _det(2, 4, (0, 0, 40, 40))])
    stats = ev.evaluate()["bbox"].stats
    assert stats[0] == pytest.approx(1.0) and stats[5] == -1.0  # no large GT -> -1 as COCOeval


@pytest.mark.parametrize("iou_types", [["bbox"], ["bbox", "segm"]])
def test_empty_predictions_give_zero_ap(iou_types):
    ev = CocoEvaluator(_gt(), iou_types)
    out = ev.evaluate()
    for t in iou_types:
        assert out[t].stats[0] == 0.0 and out[t].stats[8] == 0.0
        assert all(r["AP"] == 0.0 for r in out[t].per_category)
    ev.update({1: {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                   "labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 1, 50, 60)}})
    assert ev.evaluate()["bbox"].stats[0] == 0.0


def test_annotation_id_zero_is_an_error():
    gt = _gt()
    gt["annotations"][0]["id"] = 0
    with pytest.raises(CocoFormatError, match="annotation id 0"):
        CocoEvaluator(gt)


def test_unknown_category_in_results():
    ev = CocoEvaluator(_gt())
    ev.add_results([_det(), _det(category_id=99)])
    with pytest.raises(CocoFormatError, match=r"category ids not in the ground truth.*\[99\]"):
        ev.evaluate()
    lenient = CocoEvaluator(_gt(), strict=False)
    lenient.add_results([_det(), _det(category_id=99)])
    res = lenient.evaluate()["bbox"]
    assert res.report.unknown_category_ids == {99} and res.report.dropped == 1


def test_predictions_for_unknown_images():
    ev = CocoEvaluator(_gt())
    ev.add_results([_det(), _det(image_id=1234)])
    with pytest.raises(CocoFormatError, match=r"image ids not in the ground truth: \[1234\]"):
        ev.evaluate()
    lenient = CocoEvaluator(_gt(), strict=False)
    lenient.add_results([_det(), _det(image_id=1234)])
    assert lenient.evaluate()["bbox"].report.unknown_image_ids == {1234}


@pytest.mark.parametrize("bad, message", [
    (_det(bbox=(1, 1, -5, 3)), "negative width"),
    (_det(bbox=(1, 1, 3)), "not 4 finite numbers"),
    (_det(score=float("nan")), "score"),
    ({**_det(), "image_id": "1"}, "not an integer"),
])
def test_malformed_results(bad, message):
    ev = CocoEvaluator(_gt())
    ev.add_results([bad])
    with pytest.raises(CocoFormatError, match=message):
        ev.evaluate()


def test_segm_rle_of_wrong_size():
    ev = CocoEvaluator(_gt(), ["segm"])
    pred = {"boxes": torch.tensor([[0.0, 0, 5, 5]]), "scores": torch.tensor([0.5]),
            "labels": torch.tensor([1]), "masks": torch.ones(1, 1, 10, 10)}
    ev.update({1: pred})
    with pytest.raises(CocoFormatError, match=r"RLE size \[10, 10\] differs from the image's \[50, 60\]"):
        ev.evaluate()


def test_label_outside_category_map():
    ev = CocoEvaluator(_gt())
    with pytest.raises(ValueError, match="label 7"):
        ev.update({1: {"boxes": torch.zeros(1, 4), "scores": torch.ones(1),
                       "labels": torch.tensor([7])}})


def test_bad_gt_and_options(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        CocoEvaluator(tmp_path / "nothing.json")
    with pytest.raises(ValueError, match="unknown COCO evaluation backend 'foo'"):
        CocoEvaluator(_gt(), backend="foo")
    with pytest.raises(ValueError, match="iou type"):
        CocoEvaluator(_gt(), ["keypoints"])
    gt = copy.deepcopy(_gt())
    gt["annotations"][1]["category_id"] = 77
    with pytest.raises(CocoFormatError, match="annotation 2 has category id 77"):
        CocoEvaluator(gt)
