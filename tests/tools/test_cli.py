"""The CLI scripts: eval_coco, make_shapes, visualize."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from backbones_tools import eval_coco, make_shapes, visualize
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture()
def small_eval(tmp_path, synthetic_eval):
    gt = dict(synthetic_eval["gt"])
    keep = {img["id"] for img in gt["images"][:30]}
    gt = {"images": gt["images"][:30], "categories": gt["categories"],
          "annotations": [a for a in gt["annotations"] if a["image_id"] in keep]}
    results = [r for r in synthetic_eval["bbox"] if r["image_id"] in keep]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(results))
    return tmp_path / "gt.json", tmp_path / "res.json"


def test_eval_coco_writes_metrics(small_eval, tmp_path, capsys):
    gt, res = small_eval
    assert eval_coco.main(["--gt", str(gt), "--results", str(res), "--out", str(tmp_path / "m.json")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    with contextlib.redirect_stdout(io.StringIO()):
        g = COCO(str(gt))
        e = COCOeval(g, g.loadRes(str(res)), "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    assert metrics["stats"] == [float(v) for v in e.stats]
    assert metrics["stat_names"][:3] == ["AP", "AP50", "AP75"]
    assert len(metrics["per_class"]) == 5 and metrics["categories"]["category_ids"] == [1, 3, 7, 12, 20]
    assert "pycocotools" in metrics["versions"]
    assert "AP50" in capsys.readouterr().out


def test_eval_coco_errors(small_eval, tmp_path, capsys):
    gt, _ = small_eval
    bad = tmp_path / "bad.json"
    bad.write_text("[{]")
    assert eval_coco.main(["--gt", str(gt), "--results", str(bad)]) == 2
    assert "bad.json: malformed JSON" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        eval_coco.main(["--gt", str(gt), "--checkpoint", "x.pt"])
    assert "takes no --gt/--results" in capsys.readouterr().err
    assert eval_coco.main(["--checkpoint", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert "checkpoint not found" in err and "x.pt" in err
    with pytest.raises(SystemExit):
        eval_coco.main(["--gt", str(gt)])
    assert "give --gt and --results" in capsys.readouterr().err


def test_scripts_run_as_files(small_eval, tmp_path, shapes_dataset):
    gt, res = small_eval
    out = subprocess.run([sys.executable, str(REPO / "tools" / "eval_coco.py"), "--gt", str(gt),
                          "--results", str(res), "--backend", "faster_coco_eval"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "class12" in out.stdout


def test_make_shapes_and_visualize(tmp_path, shapes_dataset, capsys):
    assert make_shapes.main(["--root", str(tmp_path / "s"), "--num-train", "2", "--num-val", "1"]) == 0
    assert (tmp_path / "s" / "annotations" / "instances_val2017.json").is_file()
    results = [{"image_id": 1, "category_id": 2, "bbox": [5.0, 5.0, 30.0, 20.0], "score": 0.8}]
    (tmp_path / "r.json").write_text(json.dumps(results))
    assert visualize.main(["--gt", str(shapes_dataset.val_annotations), "--images",
                           str(shapes_dataset.val_images), "--out", str(tmp_path / "vis"),
                           "--num", "2", "--results", str(tmp_path / "r.json")]) == 0
    pngs = sorted((tmp_path / "vis").glob("*.png"))
    assert [p.name for p in pngs] == ["000000000001.png", "000000000002.png"]
