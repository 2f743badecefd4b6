"""tools/analyze.py: training curves of real tiny runs, a detection confusion matrix whose counts
are known by construction, a segmentation run's pixel confusion matrix against the evaluation's
numbers, and the segmentation drawing's panels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from backbones_tools import analyze
from backbones_tools.analysis.confusion import detection_confusion, pr_curves, seg_confusion
from backbones_tools.analysis.curves import load_run
from backbones_tools.config import load_config
from backbones_tools.data import make_shapes_dataset
from backbones_tools.data.palette import IGNORE, class_colour
from backbones_tools.engine import evaluate_checkpoint, train
from backbones_tools.evaluation import metrics_from_confusion, per_category_ap, run_cocoeval
from PIL import Image

from tests.test_train_det import DEMO as DET_DEMO
from tests.test_train_det import SHAPES as DET_SHAPES
from tests.test_train_det import tiny_overrides as det_overrides
from tests.test_train_seg import DEMO as SEG_DEMO
from tests.test_train_seg import SHAPES as SEG_SHAPES
from tests.test_train_seg import tiny_overrides as seg_overrides

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools


@pytest.fixture(scope="module")
def det_run(module_tmp) -> Path:
    root = module_tmp("shapes_det")
    make_shapes_dataset(root, **DET_SHAPES)
    out = module_tmp("runs") / "det_tiny"
    train(load_config(DET_DEMO, det_overrides(root, epochs=2)), out)
    return out


@pytest.fixture(scope="module")
def seg_run(module_tmp) -> Path:
    root = module_tmp("shapes_seg")
    make_shapes_dataset(root, **SEG_SHAPES)
    out = module_tmp("runs") / "seg_tiny"
    train(load_config(SEG_DEMO, seg_overrides(root, epochs=1)), out)
    return out


def assert_png(path: Path, min_size: tuple[int, int] = (400, 300)) -> np.ndarray:
    """A readable PNG at least ``min_size`` with something drawn on it; its pixels."""
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.size[0] >= min_size[0] and img.size[1] >= min_size[1], img.size
        pixels = np.asarray(img.convert("RGB"))
    assert pixels.std() > 10 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20
    return pixels


# ----------------------------------------------------------------------------- curves


def test_curves_of_two_runs_write_a_png(det_run: Path, seg_run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "curves.png"
    assert analyze.main(["curves", str(det_run), str(seg_run), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert_png(out, (1000, 800))
    run = load_run(det_run)
    assert run.name == "det_tiny" and len(run.train) == 8 and [e["epoch"] for e in run.evals] == [1, 2]
    assert run.loss_keys[0] == "loss" and "loss_classifier" in run.loss_keys and run.headlines == ["bbox/AP"]
    assert analyze.main(["curves", str(seg_run), "--out", str(tmp_path / "one.png"), "--title", "seg"]) == 0
    assert_png(tmp_path / "one.png")


def test_curves_drop_what_a_resume_replays_and_the_pause(tmp_path: Path) -> None:
    lines = [
        {"type": "start", "time": 100.0},
        *({"type": "train", "global_iter": i, "loss": 1.0 / i, "lr": 0.1, "time": 100.0 + i} for i in (1, 2, 3, 4)),
        {"type": "eval", "global_iter": 2, "bbox/AP": 0.2, "time": 103.0},
        {"type": "eval", "global_iter": 4, "bbox/AP": 0.9, "time": 105.0},  # lost: the run died after it
        {"type": "resume", "global_iter": 2, "time": 1105.0},  # resumed from iteration 2, 1000 s later
        {"type": "train", "global_iter": 3, "loss": 0.5, "lr": 0.1, "time": 1106.0},
        {"type": "eval", "global_iter": 4, "bbox/AP": 0.4, "time": 1108.0},
    ]
    # a line that is JSON but not a record, and one cut mid-write, are skipped
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + '5\n{"type": "tr')
    run = load_run(tmp_path)
    assert [(r["global_iter"], r["loss"]) for r in run.train] == [(1, 1.0), (2, 0.5), (3, 0.5)]
    assert [(e["global_iter"], e["bbox/AP"]) for e in run.evals] == [(2, 0.2), (4, 0.4)]
    assert run.eval_elapsed == [3.0, 8.0]  # 1108 - 100 - the 1000 s between the stop and the resume


def test_curves_errors_are_user_errors(tmp_path: Path, capsys) -> None:
    assert analyze.main(["curves", str(tmp_path / "nowhere"), "--out", str(tmp_path / "c.png")]) == 2
    assert "run folder not found" in capsys.readouterr().err
    assert analyze.main(["curves", str(tmp_path), "--out", str(tmp_path / "c.png")]) == 2
    assert "has no metrics.jsonl" in capsys.readouterr().err
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"type": "start", "time": 1.0}) + "\n")
    assert analyze.main(["curves", str(tmp_path), "--out", str(tmp_path / "c.png")]) == 2
    err = capsys.readouterr().err
    assert "no train or eval records" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exc:
        analyze.main(["curves", "--out", "x.png"])
    assert exc.value.code == 2


def test_help_has_examples(capsys) -> None:
    with pytest.raises(SystemExit):
        analyze.main(["--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "analyze.py curves" in out and "seg-confusion" in out


# ----------------------------------------------------------------------------- detection confusion

CATS = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 5, "name": "bird"}]


def _gt() -> dict:
    def ann(i, image_id, cat, box, crowd=0):
        return {"id": i, "image_id": image_id, "category_id": cat, "bbox": box, "area": box[2] * box[3],
                "iscrowd": crowd}

    return {"images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
            "categories": CATS,
            "annotations": [ann(1, 1, 1, [0, 0, 20, 20]),       # cat: found as cat
                            ann(2, 1, 2, [50, 50, 20, 20]),     # dog: found as bird only
                            ann(3, 1, 5, [0, 60, 20, 20]),      # bird: missed
                            ann(4, 2, 1, [0, 0, 50, 50], 1)]}   # a crowd of cats


RESULTS = [
    {"image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20], "score": 0.9},       # cat on the cat
    {"image_id": 1, "category_id": 5, "bbox": [52, 51, 20, 20], "score": 0.8},     # bird on the dog (IoU 0.75)
    {"image_id": 1, "category_id": 1, "bbox": [70, 0, 20, 20], "score": 0.5},      # cat on nothing
    {"image_id": 1, "category_id": 2, "bbox": [0, 60, 20, 20], "score": 0.1},      # dog on the bird, low score
    {"image_id": 2, "category_id": 2, "bbox": [10, 10, 20, 20], "score": 0.8},     # inside the crowd
]


def test_detection_confusion_counts_as_mmdetection(tmp_path: Path) -> None:
    m = detection_confusion(_gt(), RESULTS, iou_thr=0.5, score_thr=0.3)
    assert m.names == ["cat", "dog", "bird", "background"]
    assert m.counts.tolist() == [
        [1, 0, 0, 0],  # cat: matched by the cat detection
        [0, 0, 1, 1],  # dog: confused with bird, and missed (no dog detection matched it)
        [0, 0, 0, 1],  # bird: missed (the dog detection on it scores under the threshold)
        [1, 0, 0, 0],  # background: the cat detection on nothing; the one inside the crowd does not count
    ]
    norm = m.normalized()
    assert norm[:3].tolist() == [[1, 0, 0, 0], [0, 0, 0.5, 0.5], [0, 0, 0, 1]] and norm[3].tolist() == [1, 0, 0, 0]
    low = detection_confusion(_gt(), RESULTS, iou_thr=0.5, score_thr=0.05)
    assert low.counts[2].tolist() == [0, 1, 0, 1]  # the bird is now confused with dog too, still missed
    strict = detection_confusion(_gt(), RESULTS, iou_thr=0.9, score_thr=0.3)
    assert strict.counts.tolist() == [[1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 1], [1, 0, 1, 0]]  # bird now a FP


def test_pr_curves_are_cocoevals(tmp_path: Path) -> None:
    pr = pr_curves(_gt(), RESULTS)
    assert list(pr.precision) == ["cat", "dog", "bird"] and pr.no_ground_truth == []
    assert len(pr.recall) == 101 and set(pr.precision["cat"]) == {0.5, 0.75}
    assert pr.ap["cat"][0.5] == pytest.approx(1.0) and pr.ap["dog"][0.5] == pr.ap["bird"][0.5] == 0.0
    assert pr.precision["cat"][0.5] == pytest.approx(np.ones(101))  # COCOeval divides by tp + fp + eps
    coco_eval, _ = run_cocoeval(_gt(), RESULTS, "bbox")
    reference = per_category_ap(coco_eval, {c["id"]: c["name"] for c in CATS})
    for row in reference:
        assert pr.ap[row["name"]][0.5] == pytest.approx(row["AP50"])
        assert pr.ap[row["name"]][0.75] == pytest.approx(row["AP75"])


def test_confusion_cli_writes_the_pictures_and_json(tmp_path: Path, capsys) -> None:
    (tmp_path / "gt.json").write_text(json.dumps(_gt()))
    (tmp_path / "res.json").write_text(json.dumps(RESULTS))
    out, js = tmp_path / "conf.png", tmp_path / "conf.json"
    assert analyze.main(["confusion", "--gt", str(tmp_path / "gt.json"), "--results", str(tmp_path / "res.json"),
                         "--out", str(out), "--json", str(js)]) == 0
    assert_png(out)
    assert_png(tmp_path / "conf_pr.png")
    data = json.loads(js.read_text())
    assert data["counts"] == [[1, 0, 0, 0], [0, 0, 1, 1], [0, 0, 0, 1], [1, 0, 0, 0]]
    assert data["names"][-1] == "background" and data["iou"] == 0.5 and data["score_thresh"] == 0.3

    (tmp_path / "bad.json").write_text(json.dumps([{**RESULTS[0], "category_id": 9}]))
    assert analyze.main(["confusion", "--gt", str(tmp_path / "gt.json"), "--results", str(tmp_path / "bad.json"),
                         "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "category ids not in the ground truth" in err and "Traceback" not in err
    assert analyze.main(["confusion", "--gt", str(tmp_path / "none.json"), "--results", str(tmp_path / "res.json"),
                         "--out", str(out)]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        analyze.main(["confusion", "--gt", "g", "--results", "r", "--out", "o.png", "--iou", "0"])
    assert "must be in (0, 1]" in capsys.readouterr().err


# ----------------------------------------------------------------------------- segmentation


def test_seg_confusion_is_the_evaluations_matrix(seg_run: Path, tmp_path: Path, capsys) -> None:
    result = seg_confusion(seg_run)
    counts = result.matrix.counts
    assert result.matrix.names == ["background", "circle", "triangle", "rectangle", "star"]
    outcome = evaluate_checkpoint(seg_run / "best.pth")  # SegmentationMetrics inside the task's evaluation
    assert result.metrics["mIoU"] == pytest.approx(outcome.metrics["seg/mIoU"], abs=1e-12)
    assert np.trace(counts) / counts.sum() == pytest.approx(outcome.metrics["seg/pixel_acc"], abs=1e-12)
    for name, iou in zip(result.matrix.names, metrics_from_confusion(torch.from_numpy(counts))["per_class_iou"]):
        assert iou == pytest.approx(outcome.metrics[f"seg/IoU-{name}"], abs=1e-12, nan_ok=True)

    # the row sums are the val masks' labelled pixels per class
    from backbones_tools.config.loader import validate_config
    from backbones_tools.data import CategoryMap
    from backbones_tools.engine import load_checkpoint
    from backbones_tools.engine.tasks import make_task

    state = load_checkpoint(seg_run / "best.pth")
    cfg = validate_config(state["config"])
    _, val = make_task(cfg, Path(cfg.data.root)).build_datasets(
        train=False, category_map=CategoryMap.from_dict(state["category_map"]))
    labels = torch.cat([val[i][1].reshape(-1) for i in range(len(val))])
    labels = labels[labels != cfg.model.ignore_index]
    assert counts.sum(axis=1).tolist() == torch.bincount(labels, minlength=5).tolist()

    out, js = tmp_path / "seg.png", tmp_path / "seg.json"
    assert analyze.main(["seg-confusion", str(seg_run), "--out", str(out), "--json", str(js)]) == 0
    assert "mIoU" in capsys.readouterr().out
    assert_png(out)
    assert json.loads(js.read_text())["counts"] == counts.tolist()


def test_seg_confusion_errors(det_run: Path, tmp_path: Path, capsys) -> None:
    assert analyze.main(["seg-confusion", str(det_run), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "needs a segmentation run" in err and "Traceback" not in err
    assert analyze.main(["seg-confusion", str(tmp_path), "--out", str(tmp_path / "x.png")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_segmentation_picture_panels_and_legend(seg_run: Path) -> None:
    from backbones_tools.data.draw import HATCH_COLOUR, draw_segmentation_comparison, segmentation_panels

    image = torch.rand(3, 40, 60)
    target = torch.zeros(40, 60, dtype=torch.int64)
    target[5:15, 5:25], target[20:35, 30:50] = 1, 255
    prediction = torch.zeros_like(target)
    prediction[5:15, 5:25] = 3
    img, gt, pred = segmentation_panels(image, target, prediction, num_labels=5, side=120)
    assert img.shape == gt.shape == pred.shape == (80, 120, 3)  # scaled to a longer side of 120
    assert (gt[10:30, 10:50] == class_colour(1)).all() and (pred[10:30, 10:50] == class_colour(3)).all()
    ignored = gt[40:70, 60:100].reshape(-1, 3)
    assert {tuple(c) for c in np.unique(ignored, axis=0)} == {IGNORE, HATCH_COLOUR}  # hatched white
    assert (gt[0:5, 0:5] == 0).all() and (pred[40:70, 60:100] == 0).all()  # background black

    names = ["background", "circle", "triangle", "rectangle", "star"]
    one = draw_segmentation_comparison([(image, target, prediction)], names, side=120)
    two = draw_segmentation_comparison([(image, target, prediction)] * 2, names, side=120)
    assert one.shape[2] == two.shape[2] >= 3 * 120 and two.shape[1] > one.shape[1] + 80
    colours = {tuple(c) for c in np.unique(one.permute(1, 2, 0).reshape(-1, 3).numpy(), axis=0)}
    assert {class_colour(k) for k in range(5)} <= colours  # the legend shows every class's colour

    # the training run drew its predictions.png this way: three panels a row, a legend under them
    with Image.open(seg_run / "predictions.png") as png:
        assert png.size[0] > 3 * 300 and png.size[1] > 2 * 300
        drawn = {tuple(c) for c in np.unique(np.asarray(png.convert("RGB")).reshape(-1, 3), axis=0)}
    assert {class_colour(k) for k in range(5)} <= drawn
