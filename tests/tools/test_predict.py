"""tools/predict.py: a training checkpoint over image files (COCO results that score like the run's
own evaluation, overlays, segmentation index PNGs) and its handling of bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from backbones_tools import eval_coco, predict
from backbones_tools.config import load_config
from backbones_tools.data import make_shapes_dataset
from backbones_tools.data.palette import palette_array
from backbones_tools.engine import predict as engine
from backbones_tools.engine import train
from backbones_tools.engine.metrics import read_jsonl
from PIL import Image

from tests import test_train_det as det_demo
from tests import test_train_seg as seg_demo

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def det_run(module_tmp) -> dict[str, Path]:
    """A tiny detector trained as tests/test_train_det.py trains it, for 5 epochs (20 iterations)
    and with ``box_score_thresh=0`` so that its AP is above 0 (after 1 epoch every AP is 0, and
    an equal AP of 0 would prove nothing); evaluated once, after the last epoch."""
    root = module_tmp("shapes_predict")
    make_shapes_dataset(root, **det_demo.SHAPES)
    out = root / "run"
    cfg = load_config(det_demo.DEMO, det_demo.tiny_overrides(root, epochs=5) + [
        "train.eval_every=5", "train.checkpoint_every_iters=null", "model.options.box_score_thresh=0.0"])
    train(cfg, out)
    return {"root": root, "run": out, "checkpoint": out / "best.pth", "images": root / "val2017",
            "gt": root / "annotations" / "instances_val2017.json"}


def _last_eval(run: Path) -> dict:
    return [r for r in read_jsonl(run / "metrics.jsonl") if r["type"] == "eval"][-1]


def test_predictions_score_exactly_like_the_runs_own_evaluation(det_run, tmp_path, capsys) -> None:
    out = tmp_path / "pred"
    assert predict.main(["--checkpoint", str(det_run["checkpoint"]), "--images", str(det_run["images"]),
                         "--gt", str(det_run["gt"]), "--out", str(out)]) == 0
    assert "predictions.json" in capsys.readouterr().out
    metrics = tmp_path / "metrics.json"
    assert eval_coco.main(["--gt", str(det_run["gt"]), "--results", str(out / "predictions.json"),
                           "--out", str(metrics)]) == 0
    ap = json.loads(metrics.read_text())["metrics"]["AP"]
    expected = _last_eval(det_run["run"])["bbox/AP"]
    assert expected > 0, "the tiny run must detect something for the comparison to mean anything"
    assert ap == pytest.approx(expected, abs=1e-6)
    assert ap == expected  # bit for bit: same preprocessing, same model, batches of one image size

    # one overlay per image, at the image's size; the manifest maps files to GT ids
    gt = json.loads(det_run["gt"].read_text())
    overlays = sorted((out / "overlays").glob("*.png"))
    assert [p.name for p in overlays] == sorted(Path(i["file_name"]).stem + ".png" for i in gt["images"])
    for info in gt["images"]:
        with Image.open(out / "overlays" / (Path(info["file_name"]).stem + ".png")) as img:
            assert img.size == (info["width"], info["height"]) and img.mode == "RGB"
    manifest = json.loads((out / "manifest.json").read_text())
    assert {Path(r["file"]).name: r["image_id"] for r in manifest["images"]} == {
        i["file_name"]: i["id"] for i in gt["images"]}
    assert manifest["skipped"] == []


def test_bf16_precision_scores_close_to_fp32(det_run, tmp_path, monkeypatch) -> None:
    """--precision bf16 runs the backbone in bf16 (a warning where the CPU emulates it) and scores
    within bf16 rounding of the fp32 run: the AP moves, but little."""
    import heads
    from backbones_tools.engine import precision as P

    seen, optimize = [], heads.optimize_for_inference

    def recording(model, **kwargs):
        seen.append(kwargs.get("dtype"))
        return optimize(model, **kwargs)

    monkeypatch.setattr(heads, "optimize_for_inference", recording)
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: False)  # the warning path, on any CPU
    aps = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        args = ["--checkpoint", str(det_run["checkpoint"]), "--images", str(det_run["images"]), "--gt",
                str(det_run["gt"]), "--out", str(out), "--no-draw", "--quiet", "--precision", precision]
        if precision == "bf16":
            with pytest.warns(UserWarning, match="no native bf16"):
                assert predict.main(args) == 0
        else:
            assert predict.main(args) == 0
        metrics = tmp_path / f"{precision}.json"
        assert eval_coco.main(["--gt", str(det_run["gt"]), "--results", str(out / "predictions.json"),
                               "--out", str(metrics)]) == 0
        aps[precision] = json.loads(metrics.read_text())["metrics"]["AP"]
    assert seen == [torch.float32, torch.bfloat16]
    assert aps["fp32"] > 0 and aps["bf16"] == pytest.approx(aps["fp32"], abs=0.05), aps


def test_ids_from_file_names_no_draw_and_batches_give_the_same_results(det_run, tmp_path) -> None:
    """Without --gt the ids come from the file names (000000000003.jpg -> 3); a larger batch
    (grouped by image size) gives the same detections; --no-draw writes no overlay."""
    ref, out = tmp_path / "ref", tmp_path / "batched"
    common = ["--checkpoint", str(det_run["checkpoint"]), "--images", str(det_run["images"]), "--quiet"]
    assert predict.main(common + ["--gt", str(det_run["gt"]), "--out", str(ref), "--no-draw"]) == 0
    assert predict.main(common + ["--out", str(out), "--no-draw", "--batch-size", "4"]) == 0
    assert not (out / "overlays").exists() and not (ref / "overlays").exists()
    assert not list(out.rglob("*.png"))
    results = json.loads((out / "predictions.json").read_text())
    assert results == json.loads((ref / "predictions.json").read_text())
    names = {int(p.stem) for p in det_run["images"].glob("*.jpg")}
    assert {r["image_id"] for r in results} <= names and len(results) > 0


def test_image_ids_and_paths(tmp_path) -> None:
    assert engine.image_id_from_name("val2017/000000000139.jpg") == 139
    assert engine.image_id_from_name("COCO_val2014_000000000042.jpg") == 42
    assert engine.image_id_from_name("cat.png") is None
    paths = [Path("a/7.jpg"), Path("cat.png"), Path("b/007.jpg")]
    ids, warnings = engine.image_ids_from_names(paths)
    assert ids == {paths[0]: 7, paths[1]: 8, paths[2]: 9} and len(warnings) == 2
    for name in ("b.jpg", "a.png", "skip.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.jpg").write_bytes(b"")
    # a folder gives its image files; a glob gives its matches; duplicates are dropped
    found = engine.collect_images([tmp_path, str(tmp_path / "**" / "*.jpg"), tmp_path / "a.png"])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a.png", "b.jpg", "sub/c.jpg"]
    with pytest.raises(FileNotFoundError, match="matches no file"):
        engine.collect_images([str(tmp_path / "*.tif")])
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        engine.collect_images([tmp_path / "missing.jpg"])
    gt = {"images": [{"id": 5, "file_name": "sub/c.jpg"}, {"id": 6, "file_name": "b.jpg"}]}
    assert engine.image_ids_from_gt(found[1:], gt) == {found[1]: 6, found[2]: 5}


def test_max_size_sets_the_detectors_resize_limit(det_run) -> None:
    predictor = engine.load_predictor(det_run["checkpoint"], device="cpu", max_size=48)
    assert predictor.model.transform.max_size == 48 and predictor.kind == "det"
    assert not predictor.model.training


def test_unreadable_files_are_reported_and_skipped(det_run, tmp_path, capsys) -> None:
    images = sorted(det_run["images"].glob("*.jpg"))[:2]
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    truncated = tmp_path / "000000000099.jpg"
    truncated.write_bytes(images[0].read_bytes()[:200])
    out = tmp_path / "pred"
    args = ["--checkpoint", str(det_run["checkpoint"]), "--out", str(out), "--quiet", "--score-thresh", "0", "--images",
            str(images[0]), str(notes), str(truncated), str(images[1])]
    assert predict.main(args) == 0
    err = capsys.readouterr().err
    assert "skipped 2 unreadable files" in err and "notes.txt" in err and "000000000099.jpg" in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert [Path(r["file"]).name for r in manifest["images"]] == [p.name for p in images]
    assert {Path(s["file"]).name for s in manifest["skipped"]} == {"notes.txt", "000000000099.jpg"}
    for path in images:  # --score-thresh 0 draws every detection
        overlay = np.asarray(Image.open(out / "overlays" / f"{path.stem}.png"))
        assert overlay.shape == np.asarray(Image.open(path)).shape
        assert not np.array_equal(overlay, np.asarray(Image.open(path).convert("RGB")))
    assert {r["image_id"] for r in json.loads((out / "predictions.json").read_text())} <= {
        int(p.stem) for p in images}


def test_user_errors_exit_2_without_a_traceback(det_run, tmp_path, capsys) -> None:
    # a weights file is not a training checkpoint: run as a script, as a user would
    weights = tmp_path / "weights.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, weights)
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "predict.py"), "--checkpoint", str(weights),
                           "--images", str(det_run["images"])], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "error:" in proc.stderr and "weights.pth" in proc.stderr and "not a training checkpoint" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr

    empty = tmp_path / "empty"
    empty.mkdir()
    cases = {
        "checkpoint not found": ["--checkpoint", str(tmp_path / "nope.pth"), "--images", str(det_run["images"])],
        "matches no file": ["--checkpoint", str(det_run["checkpoint"]), "--images", str(empty / "*.jpg")],
        "no image file found": ["--checkpoint", str(det_run["checkpoint"]), "--images", str(empty)],
    }
    other = tmp_path / "other.jpg"
    shutil.copy(next(det_run["images"].glob("*.jpg")), other)
    cases["does not list 1 of the images"] = ["--checkpoint", str(det_run["checkpoint"]), "--images", str(other),
                                              "--gt", str(det_run["gt"])]
    no_id = tmp_path / "no_id.json"
    gt = json.loads(Path(det_run["gt"]).read_text())
    del gt["images"][0]["id"]
    no_id.write_text(json.dumps(gt))
    cases["images[0] has no integer 'id'"] = ["--checkpoint", str(det_run["checkpoint"]), "--images", str(other),
                                              "--gt", str(no_id)]
    for message, args in cases.items():
        assert predict.main(args + ["--out", str(tmp_path / "out")]) == 2, message
        captured = capsys.readouterr()
        assert "error: " in captured.err and message in captured.err
        assert "Traceback" not in captured.out + captured.err


def test_help_shows_an_example(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        predict.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "example:" in text and "python tools/predict.py --checkpoint" in text
    assert "predictions.json keeps every detection" in " ".join(text.split())


def test_segmentation_writes_index_pngs_with_the_palette_and_overlays(tmp_path, monkeypatch) -> None:
    root = tmp_path / "shapes"
    make_shapes_dataset(root, **seg_demo.SHAPES)
    run = tmp_path / "run"
    train(load_config(seg_demo.DEMO, seg_demo.tiny_overrides(root, epochs=1)), run)
    images = sorted((root / "val2017").glob("*.jpg"))
    out = tmp_path / "pred"
    assert predict.main(["--checkpoint", str(run / "best.pth"), "--images", str(root / "val2017"),
                         "--out", str(out), "--quiet"]) == 0
    predictor = engine.load_predictor(run / "best.pth", device="cpu")
    k = predictor.category_map.num_classes + 1
    palette = palette_array(k, predictor.cfg.model.ignore_index).flatten().tolist()
    for path in images:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        with Image.open(out / "masks" / f"{path.stem}.png") as img:
            assert img.mode == "P" and img.getpalette() == palette
            mask = np.asarray(img)
        assert mask.shape == rgb.shape[:2] and mask.max() < k
        # the pixel values are the model's class ids
        x = engine._segmentation_input(rgb, predictor.cfg.data.seg_aug.eval_size, None)
        with torch.no_grad():
            expected = predictor.model(x[None])["out"].argmax(1)[0].numpy()
        assert np.array_equal(mask, expected)
        overlay = np.asarray(Image.open(out / "overlays" / f"{path.stem}.png"))
        assert overlay.shape == rgb.shape
        assert np.array_equal(overlay[mask == 0], rgb[mask == 0])  # background left as it is
        assert np.array_equal(overlay, engine.blend_mask(rgb, mask, k))

    # class colours over the foreground only, at half opacity
    rgb = np.full((2, 2, 3), 100, np.uint8)
    blended = engine.blend_mask(rgb, np.array([[0, 1], [2, 0]]), k)
    assert (blended[0, 0] == 100).all() and (blended[1, 1] == 100).all()
    assert blended[0, 1].tolist() == [round((100 + c) / 2) for c in palette[3:6]]

    # --max-size shrinks the model's input; the masks keep the images' size
    inputs: list[tuple[int, ...]] = []
    original = engine._segmentation_input

    def recorded(*args):
        tensor = original(*args)
        inputs.append(tuple(tensor.shape[-2:]))
        return tensor

    monkeypatch.setattr(engine, "_segmentation_input", recorded)
    small = tmp_path / "small"
    assert predict.main(["--checkpoint", str(run / "best.pth"), "--images", str(images[0]), "--out", str(small),
                         "--max-size", "32", "--no-draw", "--quiet"]) == 0
    with Image.open(small / "masks" / f"{images[0].stem}.png") as img:
        assert img.size == Image.open(images[0]).size and img.mode == "P"
    assert len(inputs) == 1 and max(inputs[0]) == 32 and max(Image.open(images[0]).size) > 32
    assert not (small / "overlays").exists()
