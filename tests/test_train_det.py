"""Detection training end to end on a tiny generated dataset: run folder, metrics, errors,
NaN handling, SIGKILL + --resume, and torchrun DDP on CPU (Gloo)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from backbones_tools.config import load_config
from backbones_tools.data import make_shapes_dataset
from backbones_tools.engine import NonFiniteLossError, Trainer, load_checkpoint, train
from backbones_tools.engine.cli import main as cli_main
from backbones_tools.engine.metrics import read_jsonl

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "det" / "demo_shapes_faster_rcnn_r18.yaml"
SHAPES = dict(num_train=8, num_val=4, seed=3, image_size=64, min_object_size=8.0, max_object_size=24.0, max_objects=3)


def tiny_overrides(root: Path, epochs: int = 2) -> list[str]:
    """The demo config shrunk to seconds: 64-px images, 16-channel FPN, batch 2."""
    return [
        f"data.root={root}", "data.generate_shapes=true",
        *(f"data.shapes.{k}={v}" for k, v in SHAPES.items()),
        "data.batch_size=2", "data.num_workers=0", "data.det_aug.min_sizes=[64]", "data.det_aug.max_size=80",
        "model.fpn.out_channels=16", "model.box_head_dim=32", "model.options.min_size=64",
        "model.options.max_size=80", "model.options.rpn_pre_nms_top_n_train=100",
        "model.options.rpn_post_nms_top_n_train=50", "model.options.rpn_pre_nms_top_n_test=50",
        "model.options.rpn_post_nms_top_n_test=20", "model.options.box_batch_size_per_image=32",
        f"train.epochs={epochs}", "train.eval_every=1", "train.log_every=1", "train.checkpoint_every_iters=1",
        "train.num_threads=1", "train.amp=none", "schedule.warmup_iters=2", "eval.visualize=2",
        "schedule.horizon=iters",  # the demo decays over its time budget; tests need iteration-exact runs
    ]


@pytest.fixture(scope="module")
def shapes_root(module_tmp) -> Path:
    root = module_tmp("shapes")
    make_shapes_dataset(root, **SHAPES)
    return root


def env1() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_tiny_run_writes_the_run_folder(shapes_root: Path, tmp_path: Path) -> None:
    cfg = load_config(DEMO, tiny_overrides(shapes_root))
    result = train(cfg, tmp_path / "run")
    out = tmp_path / "run"
    for name in ("config.yaml", "last.pth", "best.pth", "metrics.jsonl", "predictions.png", "category_map.json"):
        assert (out / name).is_file(), name
    assert load_config(out / "config.yaml") == cfg  # the resolved config, loadable as it is
    records = read_jsonl(out / "metrics.jsonl")
    evals = [r for r in records if r["type"] == "eval"]
    assert [r["epoch"] for r in evals] == [1, 2]
    for key in ("bbox/AP", "bbox/AP50", "bbox/AP75", "bbox/APs", "bbox/APm", "bbox/APl"):
        assert all(-1.0 <= r[key] <= 1.0 for r in evals), key
    trains = [r for r in records if r["type"] == "train"]
    assert len(trains) == 8 and all("loss_classifier" in r and "lr" in r and "eta_s" in r for r in trains)
    state = load_checkpoint(out / "last.pth")
    assert state["epoch"] == 2 and state["iter_in_epoch"] == 0 and state["global_iter"] == 8
    assert state["category_map"]["names"] == ["circle", "triangle", "rectangle", "star"]
    assert state["config"]["model"]["kind"] == "faster_rcnn"
    assert result.metrics["bbox/AP"] == evals[-1]["bbox/AP"] and result.png == out / "predictions.png"

    # eval_coco.py's checkpoint mode rebuilds the model from the saved config and gets the same AP.
    from backbones_tools import eval_coco

    metrics_file = tmp_path / "metrics.json"
    assert eval_coco.main(["--checkpoint", str(out / "last.pth"), "--out", str(metrics_file)]) == 0
    written = json.loads(metrics_file.read_text())
    assert written["metrics"]["bbox/AP"] == pytest.approx(evals[-1]["bbox/AP"], abs=1e-12)


def _three_class_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for split in ("train2017", "val2017"):
        path = dst / "annotations" / f"instances_{split}.json"
        data = json.loads(path.read_text())
        data["categories"] = [c for c in data["categories"] if c["id"] != 4]
        data["annotations"] = [a for a in data["annotations"] if a["category_id"] != 4]
        path.write_text(json.dumps(data))
    (dst / "shapes_manifest.json").unlink()
    return dst


def test_time_horizon_run_stops_at_the_time_limit_fully_decayed(shapes_root: Path, tmp_path: Path) -> None:
    cfg = load_config(DEMO, tiny_overrides(shapes_root, epochs=1000) + [
        "schedule.horizon=time", "train.time_limit_s=4", "train.eval_every=1000", "train.checkpoint_every_iters=null",
        "schedule.warmup_iters=0", "optim.lr=0.001"])
    result = train(cfg, tmp_path / "run")
    assert 4.0 <= result.train_seconds < 30.0 and 1 < result.iterations < 1000 * 4  # stopped by the clock
    lrs = [r["lr"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["type"] == "train"]
    assert lrs[0] > 0.0005 and lrs[-1] < 0.05 * 0.001  # cosine followed the clock down to ~0
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_cpu_speedups_take_effect_and_train_alike(shapes_root: Path, tmp_path: Path) -> None:
    """``train.channels_last`` and ``train.fast_roi_align`` change the model that trains (layout,
    RoI pooler), not what it computes: the same losses up to float rounding."""
    from heads.inference import GatherMultiScaleRoIAlign

    losses = {}
    for on in (True, False):
        cfg = load_config(DEMO, tiny_overrides(shapes_root, epochs=1) + [
            "train.max_iters=3", f"train.channels_last={on}", f"train.fast_roi_align={on}"])
        trainer = Trainer(cfg, tmp_path / f"run_{on}")
        model = trainer.model_without_ddp
        assert isinstance(model.roi_heads.box_roi_pool, GatherMultiScaleRoIAlign) == on
        stem = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        assert stem.weight.is_contiguous(memory_format=torch.channels_last) == on
        trainer.fit()
        losses[on] = [r["loss"] for r in read_jsonl(tmp_path / f"run_{on}" / "metrics.jsonl") if r["type"] == "train"]
    assert len(losses[True]) == 3
    assert losses[True] == pytest.approx(losses[False], rel=1e-3)


def test_data_root_takes_classes_from_its_categories(shapes_root: Path, tmp_path: Path, capsys) -> None:
    root = _three_class_copy(shapes_root, tmp_path / "coco3")
    sets = [a for o in tiny_overrides(tmp_path / "unused", epochs=1) if not o.startswith("data.root")
            for a in ("--set", o)]
    rc = cli_main("det", ["--data-root", str(root), *sets, "--output-dir", str(tmp_path / "run")])
    assert rc == 0
    state = load_checkpoint(tmp_path / "run" / "last.pth")
    assert state["model"]["roi_heads.box_predictor.cls_score.weight"].shape[0] == 4  # 3 classes + background
    assert state["category_map"]["category_ids"] == [1, 2, 3]
    out = capsys.readouterr().out
    assert "evaluation after epoch 1 (iteration" in out and "[bbox] AP=" in out
    assert out.count("category      id      AP") == 1  # the per-class table once, at the end


def test_missing_data_root_is_a_clear_error(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "no_such_dataset"
    rc = cli_main("det", ["--data-root", str(missing), "--output-dir", str(tmp_path / "run")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "data root" in err and str(missing) in err and "instances_" in err
    assert not (tmp_path / "run" / "last.pth").exists()


def test_bad_config_key_from_the_cli(tmp_path: Path, capsys) -> None:
    assert cli_main("det", ["--set", "optim.lrr=1", "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'optim.lrr'" in err and "valid keys in optim" in err


def test_nan_loss_stops_with_the_iteration_and_keeps_the_last_checkpoint(shapes_root: Path, tmp_path: Path) -> None:
    cfg = load_config(DEMO, tiny_overrides(shapes_root))
    trainer = Trainer(cfg, tmp_path / "run")
    real_losses = trainer.task.loss_terms

    def poisoned(model, batch, device):
        total, losses = real_losses(model, batch, device)
        if trainer.global_iter == 2:  # the third iteration
            losses["loss_box_reg"] = losses["loss_box_reg"] * float("nan")
            total = sum(losses.values())
        return total, losses

    trainer.task.loss_terms = poisoned
    with pytest.raises(NonFiniteLossError, match=r"iteration 3 .*loss_box_reg=nan") as err:
        trainer.fit()
    assert "loss_classifier=" in str(err.value)
    state = load_checkpoint(tmp_path / "run" / "last.pth")
    assert state["global_iter"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def _cli(args: list[str]) -> list[str]:
    return [sys.executable, str(REPO / "tools" / "train_det.py"), "--config", str(DEMO), *args]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_an_unbroken_run(shapes_root: Path, tmp_path: Path) -> None:
    sets = [a for o in tiny_overrides(shapes_root, epochs=3) + ["train.eval_every=3", "train.deterministic=true"]
            for a in ("--set", o)]
    unbroken, broken = tmp_path / "unbroken", tmp_path / "broken"
    subprocess.run(_cli([*sets, "--output-dir", str(unbroken)]), check=True, env=env1(),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)

    proc = subprocess.Popen(_cli([*sets, "--output-dir", str(broken)]), env=env1(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = broken / "metrics.jsonl"
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            rows = read_jsonl(metrics) if metrics.exists() else []
            if any(r.get("type") == "train" and r["epoch"] == 2 and r["iter"] >= 2 for r in rows):
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed = load_checkpoint(broken / "last.pth")
    assert killed["epoch"] == 1 and 1 <= killed["iter_in_epoch"] < 4  # saved in the middle of epoch 2

    subprocess.run(_cli([*sets, "--output-dir", str(broken), "--resume"]), check=True, env=env1(),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    a, b = _weights(unbroken / "last.pth"), _weights(broken / "last.pth")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    resumed = [r for r in read_jsonl(broken / "metrics.jsonl") if r["type"] == "resume"]
    assert resumed and resumed[0]["epoch"] == 1


def test_resume_without_a_checkpoint_is_an_error(tmp_path: Path, capsys) -> None:
    rc = cli_main("det", ["--set", f"data.root={tmp_path}/none", "--set", "data.generate_shapes=false",
                          "--output-dir", str(tmp_path / "run"), "--resume"])
    assert rc == 2  # the data root is checked first; both are clear errors
    assert "data root" in capsys.readouterr().err


def _torchrun(nproc: int, module_args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *module_args]


@pytest.mark.slow
def test_torchrun_two_processes_train_and_evaluate_like_one(shapes_root: Path, tmp_path: Path) -> None:
    sets = [a for o in tiny_overrides(shapes_root, epochs=1) for a in ("--set", o)]
    run = tmp_path / "ddp"
    subprocess.run(_torchrun(2, [str(REPO / "tools" / "train_det.py"), "--config", str(DEMO), *sets,
                                 "--output-dir", str(run)]), check=True, env=env1(), timeout=400,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = load_checkpoint(run / "last.pth")
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert state["global_iter"] == 4  # 8 images / batch 2 over both processes
    evals = [r for r in read_jsonl(run / "metrics.jsonl") if r["type"] == "eval"]
    assert evals and "bbox/AP" in evals[-1]

    eval_args = ["-m", "backbones_tools.engine.evaluate", "--checkpoint", str(run / "last.pth")]
    subprocess.run([sys.executable, *eval_args, "--json", str(tmp_path / "one.json")], check=True, env=env1(),
                   timeout=300, cwd=REPO, stdout=subprocess.DEVNULL)
    subprocess.run(_torchrun(2, [*eval_args, "--json", str(tmp_path / "two.json")]), check=True, env=env1(),
                   timeout=300, cwd=REPO, stdout=subprocess.DEVNULL)
    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((tmp_path / "two.json").read_text())
    assert one == two
    assert one["bbox/AP"] == pytest.approx(evals[-1]["bbox/AP"])
