"""``train.tensorboard``: the scalars of metrics.jsonl mirrored as TensorBoard events in
``<run folder>/tensorboard/``; off by default; a clear error when the package is missing."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from backbones_tools.config import ConfigError, load_config
from backbones_tools.data import make_shapes_dataset
from backbones_tools.engine import Trainer, train
from backbones_tools.engine.metrics import read_jsonl

from tests.test_train_seg import DEMO, SHAPES, tiny_overrides

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools


@pytest.fixture(scope="module")
def shapes_root(module_tmp) -> Path:
    root = module_tmp("shapes_tb")
    make_shapes_dataset(root, **SHAPES)
    return root


def _scalars(log_dir: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})  # 0: keep every event
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def test_tensorboard_mirrors_the_jsonl_scalars(shapes_root: Path, tmp_path: Path) -> None:
    cfg = load_config(DEMO, tiny_overrides(shapes_root, epochs=1) + ["train.tensorboard=true", "eval.visualize=0"])
    train(cfg, tmp_path / "run")
    log_dir = tmp_path / "run" / "tensorboard"
    assert list(log_dir.glob("events.out.tfevents.*"))
    scalars = _scalars(log_dir)
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    trains = [r for r in records if r["type"] == "train"]
    evals = [r for r in records if r["type"] == "eval"]
    assert len(trains) == 4 and len(evals) == 1
    for key in ("loss", "loss_out", "loss_aux", "lr", "sec_per_iter"):
        logged = {r["global_iter"]: r[key] for r in trains}
        assert scalars[f"train/{key}"] == {step: np.float32(v) for step, v in logged.items()}, key
    for key in ("seg/mIoU", "seg/pixel_acc", "seg/IoU-background"):
        assert scalars[key] == {evals[0]["global_iter"]: np.float32(evals[0][key])}, key
    assert scalars["eval/eval_seconds"] == {4: np.float32(evals[0]["eval_seconds"])}
    # bookkeeping is not plotted, and neither are the start/final records
    assert not {"train/global_iter", "train/epoch", "train/time", "train/eta_s", "eval/epoch"} & set(scalars)
    assert all(tag.startswith(("train/", "eval/", "seg/")) for tag in scalars)


def test_tensorboard_is_off_by_default(shapes_root: Path, tmp_path: Path) -> None:
    cfg = load_config(DEMO, tiny_overrides(shapes_root, epochs=1) + ["train.max_iters=1", "eval.visualize=0"])
    assert cfg.train.tensorboard is False
    train(cfg, tmp_path / "run")
    assert (tmp_path / "run" / "metrics.jsonl").is_file() and not (tmp_path / "run" / "tensorboard").exists()


def test_missing_tensorboard_is_a_config_error(shapes_root: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # the import fails as if not installed
    cfg = load_config(DEMO, tiny_overrides(shapes_root, epochs=1) + ["train.tensorboard=true"])
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[tensorboard\]"'):
        Trainer(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # stopped before any work
