"""Data faults are found before the first iteration: a run with faults stops at once with the
report (no ``train`` line written), ``data.skip_invalid`` leaves the faulty records out and says
so, a val image is never silently dropped from the score, and a file that breaks mid-run stops the
run with a checkpoint (or is skipped)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from backbones_tools.config import load_config
from backbones_tools.data import make_shapes_dataset
from backbones_tools.data.errors import DatasetError
from backbones_tools.engine import Trainer, load_checkpoint
from backbones_tools.engine.cli import main as cli_main
from backbones_tools.engine.metrics import read_jsonl

from tests.test_train_det import DEMO, SHAPES, tiny_overrides


@pytest.fixture(scope="module")
def clean_root(module_tmp) -> Path:
    root = module_tmp("shapes_preflight")
    make_shapes_dataset(root, **SHAPES)
    return root


def _faulty_copy(clean: Path, dst: Path, *, val_missing: bool = False) -> Path:
    """A copy with a missing and a truncated train image, an annotation of an unknown category
    and a zero-height box (and, on request, a missing val image)."""
    shutil.copytree(clean, dst)
    ann = dst / "annotations" / "instances_train2017.json"
    data = json.loads(ann.read_text())
    images = data["images"]
    (dst / "train2017" / images[0]["file_name"]).unlink()
    truncated = dst / "train2017" / images[1]["file_name"]
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    later = [a for a in data["annotations"] if a["image_id"] not in (images[0]["id"], images[1]["id"])]
    later[0]["category_id"] = 99
    later[1]["bbox"][3] = 0.0
    ann.write_text(json.dumps(data))
    if val_missing:
        val = json.loads((dst / "annotations" / "instances_val2017.json").read_text())
        (dst / "val2017" / val["images"][0]["file_name"]).unlink()
    (dst / "shapes_manifest.json").unlink()
    return dst


def _args(root: Path, out: Path, *extra: str) -> list[str]:
    sets = [o for o in tiny_overrides(root, epochs=1) if not o.startswith("data.generate")]
    return ["--config", str(DEMO), "--output-dir", str(out), *(f"--set={o}" for o in sets),
            "--set=data.generate_shapes=false", *extra]


def _trained(out: Path) -> bool:
    rows = read_jsonl(out / "metrics.jsonl") if (out / "metrics.jsonl").exists() else []
    return any(r["type"] == "train" for r in rows)


def test_faults_stop_the_run_before_the_first_iteration(clean_root: Path, tmp_path: Path, capsys) -> None:
    root = _faulty_copy(clean_root, tmp_path / "data")
    assert cli_main("det", _args(root, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "stopped before anything ran" in err and "skip_invalid" in err
    for problem in ("image files missing", "truncated image files", "category_id is not a category",
                    "width or height <= 0"):
        assert problem in err, problem
    assert not _trained(tmp_path / "run")


def test_skip_invalid_trains_on_the_rest_and_reports_what_was_dropped(clean_root: Path, tmp_path: Path,
                                                                      capsys) -> None:
    root = _faulty_copy(clean_root, tmp_path / "data")
    assert cli_main("det", _args(root, tmp_path / "run", "--set=data.skip_invalid=true")) == 0
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    pre = next(r for r in rows if r["type"] == "preflight")["train2017"]
    assert (pre["skipped_images"], pre["skipped_annotations"]) == (2, 2)
    assert {"missing_image_file", "truncated_image", "unknown_category_id", "non_positive_box"} <= set(pre["problems"])
    data = json.loads((root / "annotations" / "instances_train2017.json").read_text())
    bad_images = {data["images"][0]["id"], data["images"][1]["id"]}
    usable = {a["image_id"] for a in data["annotations"] if a["image_id"] not in bad_images
              and a["category_id"] != 99 and a["bbox"][3] > 0 and not a["iscrowd"]}
    start = next(r for r in rows if r["type"] == "start")
    assert start["train_images"] == len(usable) and _trained(tmp_path / "run")


def test_a_missing_val_image_stops_the_run_before_training(clean_root: Path, tmp_path: Path, capsys) -> None:
    root = tmp_path / "data"
    shutil.copytree(clean_root, root)
    val = json.loads((root / "annotations" / "instances_val2017.json").read_text())
    missing = val["images"][0]["file_name"]
    (root / "val2017" / missing).unlink()
    assert cli_main("det", _args(root, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert "val split 'val2017'" in err and missing in err and not _trained(tmp_path / "run")

    # with skip_invalid the image is left out of the score, and the score says so
    assert cli_main("det", _args(root, tmp_path / "run2", "--set=data.skip_invalid=true")) == 0
    evals = [r for r in read_jsonl(tmp_path / "run2" / "metrics.jsonl") if r["type"] == "eval"]
    assert evals[-1]["eval/images_left_out"] == 1
    assert "1 unreadable val images left out of the score" in capsys.readouterr().out

    # evaluating the checkpoint takes the same preflight (its saved config has skip_invalid on)
    from backbones_tools import eval_coco

    ckpt = str(tmp_path / "run2" / "last.pth")
    assert eval_coco.main(["--checkpoint", ckpt, "--data-root", str(root), "--set", "data.skip_invalid=false"]) == 2
    assert missing in capsys.readouterr().err
    assert eval_coco.main(["--checkpoint", ckpt, "--data-root", str(root)]) == 0
    assert "1 unreadable val images left out of the score" in capsys.readouterr().out


@pytest.mark.parametrize("skip", [False, True])
def test_a_file_that_breaks_after_the_preflight(clean_root: Path, tmp_path: Path, skip: bool) -> None:
    root = tmp_path / "data"
    shutil.copytree(clean_root, root)
    cfg = load_config(DEMO, [o for o in tiny_overrides(root, epochs=1) if not o.startswith("data.generate")]
                      + ["data.generate_shapes=false", f"data.skip_invalid={skip}"])
    trainer = Trainer(cfg, tmp_path / "run")
    if skip:  # one image breaks: skipped, and the run goes on
        next((root / "train2017").iterdir()).write_bytes(b"")
        assert trainer.fit().iterations == 4
        return
    for path in (root / "train2017").iterdir():  # every image: the first batch hits one
        path.write_bytes(b"")
    with pytest.raises(DatasetError, match="training stopped after iteration 0;.*last.pth was written"):
        trainer.fit()
    assert load_checkpoint(tmp_path / "run" / "last.pth")["global_iter"] == 0
