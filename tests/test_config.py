"""Config loading: _base_ inheritance, --set overrides, validation errors, shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from backbones_tools.config import (
    ConfigError,
    TrainConfig,
    config_to_yaml,
    load_config,
    load_config_dict,
    parse_override,
)
from backbones_tools.engine.tasks import build_detection_model, build_segmentation_model

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for task in ("det", "seg") for p in (REPO / "configs" / task).glob("*.yaml"))
#: trunks too big to build in the fast test set (built in the slow one)
BIG = ("r101", "x101", "res2net101")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def base_tree(tmp_path: Path) -> Path:
    write(tmp_path / "base" / "model.yaml", "task: det\nmodel:\n  kind: faster_rcnn\n  backbone:\n    name: resnet18\n    norm: GN\n")
    write(tmp_path / "base" / "optim.yaml", "optim:\n  lr: 0.1\n  momentum: 0.8\n")
    return write(tmp_path / "child.yaml",
                 "_base_: [base/model.yaml, base/optim.yaml]\noptim:\n  lr: 0.05\nmodel:\n  backbone:\n    name: resnet34\n")


def test_base_inheritance_and_overrides(base_tree: Path) -> None:
    cfg = load_config(base_tree, ["optim.momentum=0.7", "train.epochs=3", "model.fpn.out_channels=32"])
    assert cfg.model.backbone.name == "resnet34"       # child replaces base
    assert cfg.model.backbone.norm == "GN"              # base value kept (deep merge)
    assert cfg.optim.lr == 0.05
    assert cfg.optim.momentum == 0.7                    # --set wins
    assert cfg.train.epochs == 3 and cfg.model.fpn.out_channels == 32


def test_set_parses_yaml_values() -> None:
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert parse_override("x=null") == (["x"], None)
    assert parse_override("x=true") == (["x"], True)
    assert parse_override("x=hello") == (["x"], "hello")
    with pytest.raises(ConfigError, match="expected key.sub=value"):
        parse_override("novalue")


def test_unknown_key_names_key_file_and_valid_keys(base_tree: Path) -> None:
    write(base_tree.parent / "typo.yaml", "_base_: child.yaml\noptim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(base_tree.parent / "typo.yaml")
    msg = str(err.value)
    assert "'optim.lrr'" in msg and "typo.yaml" in msg
    assert "valid keys in optim:" in msg and "weight_decay" in msg


def test_unknown_key_from_base_names_the_base_file(base_tree: Path) -> None:
    write(base_tree.parent / "base" / "model.yaml", "task: det\nmodel:\n  kind: faster_rcnn\n  colour: red\n")
    with pytest.raises(ConfigError, match=r"'model.colour' \(set in .*base/model.yaml\)"):
        load_config(base_tree)


def test_unknown_key_from_set_names_set(base_tree: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'train.epochz' \(set in --set\)"):
        load_config(base_tree, ["train.epochz=2"])


def test_wrong_type_names_key_and_file(base_tree: Path) -> None:
    write(base_tree.parent / "bad.yaml", "_base_: child.yaml\ntrain:\n  epochs: many\n")
    with pytest.raises(ConfigError, match=r"train.epochs: .*integer.*'many'.*bad.yaml"):
        load_config(base_tree.parent / "bad.yaml")
    with pytest.raises(ConfigError, match=r"model.backbone.norm: .*'XX'.*--set"):
        load_config(base_tree, ["model.backbone.norm=XX"])


def test_missing_base_is_an_error(tmp_path: Path) -> None:
    child = write(tmp_path / "c.yaml", "_base_: nowhere.yaml\ntask: det\n")
    with pytest.raises(ConfigError, match=r"config file not found: .*nowhere.yaml \(named as _base_ in .*c.yaml\)"):
        load_config(child)


def test_base_cycle_and_bad_yaml(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="_base_ cycle"):
        load_config(tmp_path / "a.yaml")
    write(tmp_path / "broken.yaml", "task: [det\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(tmp_path / "broken.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")


def test_missing_required_and_task_kind_mismatch(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing key 'model'"):
        load_config(write(tmp_path / "m.yaml", "task: det\n"))
    with pytest.raises(ConfigError, match="not a seg model"):
        load_config(write(tmp_path / "k.yaml", "task: seg\nmodel:\n  kind: faster_rcnn\n"))


def test_time_horizon_needs_a_time_limit(base_tree: Path) -> None:
    with pytest.raises(ConfigError, match="time_limit_s"):
        load_config(base_tree, ["schedule.name=cosine", "schedule.horizon=time"])
    cfg = load_config(base_tree, ["schedule.name=cosine", "schedule.horizon=time", "train.time_limit_s=60"])
    assert cfg.schedule.horizon == "time"
    with pytest.raises(ConfigError, match="horizon"):
        load_config(base_tree, ["schedule.horizon=epochs"])
    with pytest.raises(ConfigError, match="applies to cosine and poly"):
        load_config(base_tree, ["schedule.horizon=time", "train.time_limit_s=60", "schedule.name=step"])


def test_set_into_a_value_is_an_error(base_tree: Path) -> None:
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config(base_tree, ["optim.lr.x=1"])


def test_resolved_yaml_round_trips(base_tree: Path, tmp_path: Path) -> None:
    cfg = load_config(base_tree, ["data.batch_size=2"])
    saved = write(tmp_path / "saved.yaml", config_to_yaml(cfg))
    assert load_config(saved) == cfg


def _build(cfg: TrainConfig) -> torch.nn.Module:
    if cfg.task == "det":
        return build_detection_model(cfg, num_classes=80 if cfg.data.categories is None else len(cfg.data.categories))
    return build_segmentation_model(cfg, num_classes=len(cfg.data.categories or [1, 2, 3]))


def _config_params():
    for path in CONFIGS:
        rel = path.relative_to(REPO).as_posix()
        marks = [pytest.mark.slow] if any(b in path.stem for b in BIG) else []
        yield pytest.param(path, id=rel, marks=marks)


def test_every_config_is_found() -> None:
    names = {p.stem for p in CONFIGS}
    for needed in ("faster_rcnn_r50_fpn_1x_coco", "faster_rcnn_r101_fpn_1x_coco", "faster_rcnn_x101_32x8d_fpn_1x_coco",
                   "faster_rcnn_res2net50_26w_4s_fpn_1x_coco", "faster_rcnn_res2net101_26w_4s_fpn_1x_coco",
                   "retinanet_r50_fpn_1x_coco", "fcos_r50_fpn_1x_coco", "mask_rcnn_r50_fpn_1x_coco",
                   "demo_shapes_faster_rcnn_r18", "demo_shapes_deeplabv3plus_r18"):
        assert needed in names
    assert sum(1 for n in names if n.startswith("deeplab")) == 12


def test_demos_share_the_generators_default_dataset() -> None:
    """Both demos read the dataset ``tools/make_shapes.py`` writes with no flags: switching between
    them (or generating first) reuses the cached ``data/shapes`` instead of regenerating it."""
    from backbones_tools.data import ShapesParams

    default = ShapesParams()
    for name in ("det/demo_shapes_faster_rcnn_r18.yaml", "seg/demo_shapes_deeplabv3plus_r18.yaml"):
        cfg = load_config(REPO / "configs" / name)
        assert cfg.data.generate_shapes and cfg.data.root == "data/shapes"
        for field, value in cfg.data.shapes.model_dump().items():
            assert getattr(default, field) == value, (name, field)


@pytest.mark.parametrize("path", list(_config_params()))
def test_shipped_config_loads_validates_and_builds(path: Path) -> None:
    data, _ = load_config_dict(path)
    assert "_base_" not in data
    # Never download in tests: pretrained trunk weights are switched off.
    cfg = load_config(path, ["model.backbone.weights=null"])
    assert cfg.model.backbone.weights is None
    model = _build(cfg)
    assert sum(p.numel() for p in model.parameters()) > 1_000_000
    if "coco" in path.stem:
        if cfg.task == "det":
            assert cfg.optim.base_batch_size == 16 and cfg.data.batch_size == 16
            assert cfg.train.epochs == 12 and cfg.schedule.milestones == [8, 11]
            assert cfg.schedule.warmup_iters == 1000 and cfg.data.aspect_ratio_grouping
            assert cfg.model.backbone.norm == "FrozenBN" and cfg.model.backbone.frozen_stages == 1
        else:
            assert cfg.schedule.name == "poly" and cfg.model.aux and cfg.model.aux_weight == 0.5
            assert cfg.model.ignore_index == 255 and len(cfg.data.categories) == 20

