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


@pytest.mark.parametrize("fault", [
    {"image_id": True}, {"image_id": 1.0}, {"image_id": 7}, {"category_id": "3"}, {"category_id": 99},
    {"score": float("nan")}, {"score": "0.9"}, {"score": None}, {"bbox": [10, 10, -1, 20]},
    {"bbox": [10, 10, 20]}, {"bbox": [10, 10, 20, float("inf")]},
    {"bbox": [10, 10, 20, True]}, {"bbox": [10, "10", 20, 20]},
])
def test_the_numpy_check_passes_a_fault_to_the_named_checks(fault):
    from backbones_tools.evaluation.results import _all_valid_boxes, validate_results

    good = [_det(), _det(2, 4, (0, 0, 40, 40), 0.5)]
    assert _all_valid_boxes(good, _gt()) and _all_valid_boxes([{**good[0], "bbox": (1, 2, 3.5, 4)}], _gt())
    bad = [good[0], {**good[1], **fault}]
    assert not _all_valid_boxes(bad, _gt())
    kept, report = validate_results(bad, "bbox", _gt(), strict=False)
    assert kept == [good[0]] and report.dropped == 1, report.describe()


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_evaluation_leaves_the_callers_data_unchanged(backend, iou_type):
    from pycocotools import mask as mask_utils

    pytest.importorskip("faster_coco_eval") if backend != "pycocotools" else None
    gt = _gt()
    gt["annotations"][1]["segmentation"] = mask_utils.frPyObjects([[0, 0, 40, 0, 40, 40, 0, 40]], 50, 60)[0]
    gt["annotations"][1]["segmentation"]["counts"] = gt["annotations"][1]["segmentation"]["counts"].decode()
    results = [_det(), _det(2, 4, (0, 0, 40, 40), 0.5)]
    if iou_type == "segm":
        for r, ann in zip(results, gt["annotations"]):
            rle = mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], 50, 60)) \
                if isinstance(ann["segmentation"], list) else dict(ann["segmentation"])
            r["segmentation"] = {"size": [50, 60], "counts": rle["counts"] if isinstance(rle["counts"], str)
                                 else rle["counts"].decode()}
            del r["bbox"]
    gt_before, results_before = copy.deepcopy(gt), copy.deepcopy(results)
    first = [CocoEvaluator(gt, [iou_type], backend=backend) for _ in range(2)]
    for ev in first:
        ev.add_results(results, iou_type)
    stats = [ev.evaluate()[iou_type].stats for ev in first]
    assert gt == gt_before and results == results_before
    assert stats[0] == stats[1] and stats[0][0] == pytest.approx(1.0)
