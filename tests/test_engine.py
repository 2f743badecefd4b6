"""Engine parts: parameter groups, schedules, atomic checkpoints, RNG state, seeded augmentation."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from backbones_tools.config.schema import OptimConfig, ScheduleConfig
from backbones_tools.engine import (
    build_optimizer,
    build_scheduler,
    load_checkpoint,
    lr_factor_fn,
    save_checkpoint,
    scaled_lr,
)
from backbones_tools.engine.checkpoint import CheckpointError, capture_rng_state, restore_rng_state
from backbones_tools.engine.data import SeededAugmentation, ShardSampler, sample_seed
from backbones_tools.engine.metrics import JsonlWriter, read_jsonl
from backbones_tools.engine.trainer import grad_norms_per_stage, stage_of
from torch import nn


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.head = nn.Sequential(nn.Conv2d(4, 2, 1), nn.GroupNorm(1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.body(x))


def _groups(opt: torch.optim.Optimizer) -> dict[str, dict]:
    return {g["name"]: g for g in opt.param_groups}


def test_parameter_groups_no_decay_on_norm_and_bias_and_trunk_multiplier() -> None:
    model = Toy()
    cfg = OptimConfig(name="sgd", lr=0.02, base_batch_size=16, weight_decay=1e-4, backbone_lr_mult=0.1)
    opt = build_optimizer(model, cfg, batch_size=8, trunk_prefixes=("backbone.body.",))
    groups = _groups(opt)
    assert set(groups) == {"trunk/decay", "trunk/no_decay", "head/decay", "head/no_decay"}
    assert groups["head/decay"]["lr"] == pytest.approx(0.01)            # 0.02 * 8 / 16
    assert groups["trunk/decay"]["lr"] == pytest.approx(0.001)          # x backbone_lr_mult
    assert groups["head/no_decay"]["weight_decay"] == 0.0
    assert groups["head/decay"]["weight_decay"] == 1e-4
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    assert id(model.backbone.body[0].weight) in ids["trunk/decay"]
    assert {id(model.backbone.body[1].weight), id(model.backbone.body[0].bias)} <= ids["trunk/no_decay"]
    assert id(model.head[1].weight) in ids["head/no_decay"]
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9


def test_frozen_parameters_are_left_out_and_adamw() -> None:
    model = Toy()
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    opt = build_optimizer(model, OptimConfig(name="adamw", lr=1e-3, base_batch_size=None, norm_bias_decay=True),
                          batch_size=4, trunk_prefixes=("backbone.body.",))
    assert isinstance(opt, torch.optim.AdamW)
    assert set(_groups(opt)) == {"head/decay"}
    assert scaled_lr(OptimConfig(lr=0.02, base_batch_size=16), 32) == pytest.approx(0.04)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(model, OptimConfig(), batch_size=16)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_fused_optimizer_steps_like_the_foreach_one(name: str) -> None:
    torch.manual_seed(0)
    # no norm layers: their near-zero gradients would let Adam amplify rounding differences
    models = [nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1)) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    opts = [build_optimizer(m, OptimConfig(name=name, lr=0.01, base_batch_size=None, fused=fused), batch_size=1)
            for m, fused in zip(models, (True, False))]
    assert opts[0].defaults["fused"] is True and not opts[1].defaults["fused"]
    x = torch.randn(2, 3, 8, 8)
    for _ in range(3):
        for model, opt in zip(models, opts):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_warmup_then_step_schedule() -> None:
    cfg = ScheduleConfig(name="step", milestones=[2, 3], gamma=0.1, warmup_iters=10, warmup_factor=0.001)
    f = lr_factor_fn(cfg, iters_per_epoch=10, total_iters=40)
    assert f(0) == pytest.approx(0.001)
    assert f(5) == pytest.approx(0.001 * 0.5 + 0.5)
    assert f(10) == pytest.approx(1.0) and f(19) == pytest.approx(1.0)
    assert f(20) == pytest.approx(0.1) and f(30) == pytest.approx(0.01)


@pytest.mark.parametrize("name", ["cosine", "poly"])
def test_decaying_schedules_reach_the_floor(name: str) -> None:
    cfg = ScheduleConfig(name=name, warmup_iters=0, min_lr_ratio=0.1, power=0.9)
    f = lr_factor_fn(cfg, iters_per_epoch=5, total_iters=100)
    values = [f(i) for i in range(101)]
    assert values[0] == pytest.approx(1.0) and values[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(values, values[1:]))
    if name == "cosine":
        assert values[50] == pytest.approx(0.1 + 0.9 * 0.5)
    else:
        assert values[50] == pytest.approx(0.1 + 0.9 * 0.5 ** 0.9)


def test_time_horizon_decays_over_the_time_budget() -> None:
    cfg = ScheduleConfig(name="cosine", horizon="time", warmup_iters=0)
    spent = {"fraction": 0.0}
    f = lr_factor_fn(cfg, iters_per_epoch=10, total_iters=1000, time_progress=lambda: spent["fraction"])
    assert f(10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.01)))  # iterations lead
    spent["fraction"] = 0.5
    assert f(10) == pytest.approx(0.5)  # half the budget spent: half-way down the cosine
    spent["fraction"] = 1.0
    assert f(20) == pytest.approx(0.0)
    iters_only = lr_factor_fn(ScheduleConfig(name="cosine", warmup_iters=0), 10, 1000, lambda: 1.0)
    assert iters_only(10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.01)))  # clock ignored
    with pytest.raises(ValueError, match="time budget"):
        lr_factor_fn(cfg, iters_per_epoch=10, total_iters=1000)


def test_scheduler_steps_per_iteration_and_restores() -> None:
    model = Toy()
    opt = build_optimizer(model, OptimConfig(lr=0.1, base_batch_size=None), batch_size=1)
    sched = build_scheduler(opt, ScheduleConfig(name="cosine", warmup_iters=0), 1, 10)
    for _ in range(5):
        opt.step()
        sched.step()
    lr5 = opt.param_groups[0]["lr"]
    assert lr5 == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    opt2 = build_optimizer(model, OptimConfig(lr=0.1, base_batch_size=None), batch_size=1)
    sched2 = build_scheduler(opt2, ScheduleConfig(name="cosine", warmup_iters=0), 1, 10)
    sched2.load_state_dict(sched.state_dict())
    opt.step(); sched.step(); sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])


def test_atomic_checkpoint_keeps_the_old_file_on_failure(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "last.pth"
    save_checkpoint(path, {"model": {"w": torch.ones(2)}, "epoch": 1})

    def broken_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"model": {"w": torch.zeros(2)}, "epoch": 2})
    monkeypatch.undo()
    state = load_checkpoint(path)
    assert state["epoch"] == 1 and torch.equal(state["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]  # no temp file left behind


def test_load_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "none.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "junk.pth")
    torch.save({"weights": 1}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="no 'model' entry"):
        load_checkpoint(tmp_path / "other.pth")


def test_rng_state_round_trip_through_a_checkpoint(tmp_path: Path) -> None:
    random.seed(1); np.random.seed(2); torch.manual_seed(3)
    save_checkpoint(tmp_path / "c.pth", {"model": {}, "rng": capture_rng_state()})
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(9); np.random.seed(9); torch.manual_seed(9)
    restore_rng_state(load_checkpoint(tmp_path / "c.pth")["rng"])
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


class _RandomAug:
    """Stands in for an albumentations Compose: set_random_seed + a draw."""

    def __init__(self) -> None:
        self.rng = np.random.default_rng(0)

    def set_random_seed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)


class _Data(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.transforms = type("T", (), {})()
        self.transforms.pipeline = _RandomAug()

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> float:
        return float(self.transforms.pipeline.rng.random())


def test_seeded_augmentation_depends_only_on_seed_epoch_index() -> None:
    ds = SeededAugmentation(_Data(), seed=5)
    first = [ds[i] for i in range(4)]
    assert [ds[i] for i in reversed(range(4))] == list(reversed(first))  # order-independent
    ds.epoch = 1
    assert [ds[i] for i in range(4)] != first
    assert sample_seed(5, 0, 1) == sample_seed(5, 0, 1) != sample_seed(5, 1, 1)


def test_real_albumentations_pipeline_is_reseeded() -> None:
    from backbones_tools.data import build_detection_transforms

    class D(torch.utils.data.Dataset):
        transforms = build_detection_transforms(True, min_sizes=(32, 40, 48, 56), max_size=100)

        def __len__(self):
            return 2

        def __getitem__(self, i):
            img = np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8)
            return self.transforms(img, np.array([[2, 2, 20, 20]]), np.array([1]))

    ds = SeededAugmentation(D(), seed=0)
    a, b = ds[1], ds[1]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])


def test_shard_sampler_partitions_without_padding() -> None:
    shards = [list(ShardSampler(7, r, 3)) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(7))


def test_stage_names_and_grad_norms() -> None:
    prefixes = ("backbone.body.",)
    assert stage_of("backbone.body.conv1.weight", prefixes) == "trunk.stem"
    assert stage_of("backbone.body.layer3.0.conv1.weight", prefixes) == "trunk.layer3"
    assert stage_of("backbone.fpn.inner_blocks.0.0.weight", prefixes) == "backbone.fpn"
    assert stage_of("roi_heads.box_head.fc6.weight", prefixes) == "roi_heads"
    model = Toy()
    model(torch.randn(1, 3, 8, 8)).pow(2).sum().backward()
    norms = grad_norms_per_stage(model, prefixes)
    assert set(norms) == {"grad_norm/trunk.stem", "grad_norm/head"}
    assert all(v > 0 for v in norms.values())


def test_jsonl_writer(tmp_path: Path) -> None:
    w = JsonlWriter(tmp_path / "m.jsonl")
    w.write({"type": "eval", "bbox/AP": 0.5, "nan": float("nan")})
    w.write({"type": "train", "loss": torch.tensor(1.5)})
    rows = read_jsonl(tmp_path / "m.jsonl")
    assert rows[0]["bbox/AP"] == 0.5 and rows[0]["nan"] is None and rows[1]["loss"] == 1.5
    JsonlWriter(None).write({"x": 1})  # disabled writer (non-zero ranks) is a no-op
