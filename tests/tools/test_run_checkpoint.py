"""What the tools read from a run checkpoint: each fault is a CheckpointError naming the file."""

from __future__ import annotations

import pytest
import torch
from backbones_tools.config import load_config
from backbones_tools.engine.checkpoint import CheckpointError
from backbones_tools.engine.run_checkpoint import checkpoint_config, load_run_weights, saved_category_map

from tests.test_train_det import DEMO


def test_config_saved_given_or_missing(tmp_path) -> None:
    saved = load_config(DEMO).model_dump(mode="json")
    cfg = checkpoint_config("run.pth", {"config": saved}, overrides=["optim.lr=0.5"])
    assert cfg.optim.lr == 0.5 and cfg.model.backbone.name == "resnet18"
    assert checkpoint_config("run.pth", {}, config=str(DEMO), overrides=["optim.lr=0.25"]).optim.lr == 0.25
    with pytest.raises(CheckpointError, match="run.pth holds no config; pass one with --config"):
        checkpoint_config("run.pth", {"model": {}}, overrides=["optim.lr=0.5"])  # --set on a config-less file


def test_category_map_read_or_refused() -> None:
    good = {"category_ids": [3, 7], "names": ["a", "b"]}
    assert saved_category_map("run.pth", {"category_map": good}).category_ids == (3, 7)
    assert saved_category_map("run.pth", {}) is None
    for bad in ({"category_ids": [3]}, {"category_ids": [3, 3], "names": ["a", "b"]}, [1, 2]):
        with pytest.raises(CheckpointError, match="run.pth: unreadable category map"):
            saved_category_map("run.pth", {"category_map": bad})


def test_weights_that_do_not_fit_name_the_file_and_the_config() -> None:
    model = torch.nn.Linear(2, 3)
    load_run_weights(model, {"model": {"weight": torch.ones(3, 2), "bias": torch.zeros(3)}}, "run.pth")
    assert torch.equal(model.weight, torch.ones(3, 2))
    with pytest.raises(CheckpointError, match=r"weights in run.pth do not fit the model of --config c.yaml: .*size"):
        load_run_weights(model, {"model": {"weight": torch.ones(4, 2), "bias": torch.zeros(4)}}, "run.pth", "c.yaml")
    with pytest.raises(CheckpointError, match="weights in run.pth do not fit the model of its saved config"):
        load_run_weights(model, {}, "run.pth")
