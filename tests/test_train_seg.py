"""Segmentation training end to end on a tiny generated dataset: run folder, mIoU metrics,
crash + resume equality, checkpoint evaluation and errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from backbones_tools.config import load_config
from backbones_tools.data import make_shapes_dataset
from backbones_tools.engine import Trainer, evaluate_checkpoint, load_checkpoint, train
from backbones_tools.engine.cli import main as cli_main
from backbones_tools.engine.metrics import read_jsonl

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "seg" / "demo_shapes_deeplabv3plus_r18.yaml"
SHAPES = dict(num_train=8, num_val=4, seed=5, image_size=64, min_object_size=8.0, max_object_size=24.0, max_objects=3)


def tiny_overrides(root: Path, epochs: int = 2) -> list[str]:
    """The demo config shrunk to seconds: 64-px images and crops, narrow heads, batch 2."""
    return [
        f"data.root={root}", "data.generate_shapes=true",
        *(f"data.shapes.{k}={v}" for k, v in SHAPES.items()),
        "data.batch_size=2", "data.num_workers=0", "data.seg_aug.base_size=64", "data.seg_aug.crop_size=48",
        "model.options.aspp_channels=16", "model.options.low_level_channels=8", "model.aux=true",
        f"train.epochs={epochs}", "train.eval_every=1", "train.log_every=1", "train.checkpoint_every_iters=1",
        "train.num_threads=1", "train.amp=none", "schedule.warmup_iters=2", "eval.visualize=2",
        "schedule.horizon=iters",  # the demo decays over its time budget; tests need iteration-exact runs
        "model.backbone.weights=null",  # the demo fine-tunes the detection demo's trunk; these train from scratch
    ]


@pytest.fixture(scope="module")
def shapes_root(module_tmp) -> Path:
    root = module_tmp("shapes_seg")
    make_shapes_dataset(root, **SHAPES)
    return root


def test_tiny_run_logs_miou_and_draws(shapes_root: Path, tmp_path: Path) -> None:
    cfg = load_config(DEMO, tiny_overrides(shapes_root))
    result = train(cfg, tmp_path / "run")
    out = tmp_path / "run"
    for name in ("config.yaml", "last.pth", "best.pth", "metrics.jsonl", "predictions.png"):
        assert (out / name).is_file(), name
    evals = [r for r in read_jsonl(out / "metrics.jsonl") if r["type"] == "eval"]
    assert [r["epoch"] for r in evals] == [1, 2]
    for r in evals:
        assert 0.0 <= r["seg/mIoU"] <= 1.0 and 0.0 <= r["seg/pixel_acc"] <= 1.0
        assert "seg/IoU-background" in r
    trains = [r for r in read_jsonl(out / "metrics.jsonl") if r["type"] == "train"]
    assert {"loss_out", "loss_aux"} <= set(trains[0])  # auxiliary loss (weight 0.5) is trained
    state = load_checkpoint(out / "last.pth")
    assert state["task"] == "seg" and len(state["category_map"]["names"]) == 4
    assert result.best["metric"] == "seg/mIoU"

    # evaluating the saved checkpoint reproduces the run's last evaluation
    outcome = evaluate_checkpoint(out / "last.pth")
    assert outcome.metrics["seg/mIoU"] == pytest.approx(evals[-1]["seg/mIoU"])
    assert outcome.metrics["seg/pixel_acc"] == pytest.approx(evals[-1]["seg/pixel_acc"])


class Crash(RuntimeError):
    pass


def test_crash_mid_epoch_then_resume_matches_an_unbroken_run(shapes_root: Path, tmp_path: Path) -> None:
    cfg = load_config(DEMO, tiny_overrides(shapes_root, epochs=2) + ["train.eval_every=2"])
    train(cfg, tmp_path / "unbroken")

    trainer = Trainer(cfg, tmp_path / "broken")
    real = trainer.task.loss_terms

    def crashing(model, batch, device):
        if trainer.global_iter == 6:  # iteration 7 = batch 3 of epoch 2 (4 batches per epoch)
            raise Crash("simulated crash")
        return real(model, batch, device)

    trainer.task.loss_terms = crashing
    with pytest.raises(Crash):
        trainer.fit()
    saved = load_checkpoint(tmp_path / "broken" / "last.pth")
    assert (saved["epoch"], saved["iter_in_epoch"], saved["global_iter"]) == (1, 2, 6)

    train(cfg, tmp_path / "broken", resume=True)
    a = load_checkpoint(tmp_path / "unbroken" / "last.pth")["model"]
    b = load_checkpoint(tmp_path / "broken" / "last.pth")["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_det_config_through_the_seg_tool_is_an_error(tmp_path: Path, capsys) -> None:
    det = REPO / "configs" / "det" / "demo_shapes_faster_rcnn_r18.yaml"
    assert cli_main("seg", ["--config", str(det), "--output-dir", str(tmp_path)]) == 2
    assert "is a 'det' config; use tools/train_det.py" in capsys.readouterr().err


def test_wrong_type_from_the_cli(tmp_path: Path, capsys) -> None:
    assert cli_main("seg", ["--set", "data.batch_size=eight", "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "data.batch_size" in err and "'eight'" in err and "--set" in err


def test_bf16_autocast_on_cpu_trains(shapes_root: Path, tmp_path: Path) -> None:
    cfg = load_config(DEMO, tiny_overrides(shapes_root, epochs=1) + ["train.amp=bf16", "train.eval_every=1"])
    result = train(cfg, tmp_path / "run")
    trains = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["type"] == "train"]
    assert len(trains) == 4 and all(0 < r["loss"] < 100 for r in trains)
    assert 0.0 <= result.metrics["seg/mIoU"] <= 1.0
