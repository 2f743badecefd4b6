"""Every config field changes what runs.

A meta-test walks the schema (:class:`DetTrainConfig` and :class:`SegTrainConfig`, nested sections
included) and requires every leaf field in :data:`COVERED`, mapped to the test that shows the field
on values: a test of this file, or ``tests/<file>.py::<test>`` for one elsewhere (its ``def`` is
looked up in that file, so the map cannot point at a test that is gone). A new field without such a
test fails the meta-test.

The tests below build what a field affects (a Trainer without ``fit``, the model, datasets,
loaders, optimiser, drawing) with two values and assert the built thing differs the way the field
promises. The few that need the loop run a stubbed-evaluation ``fit`` of a handful of iterations.
"""

from __future__ import annotations

import json
import re
import shutil
import typing
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from backbones_tools.config import ConfigError, load_config, load_config_dict, validate_config
from backbones_tools.config.schema import DetTrainConfig, Section, SegTrainConfig, TrainConfig
from backbones_tools.data import aspect_ratio_group_ids, make_shapes_dataset
from backbones_tools.distributed import DistContext
from backbones_tools.engine import Trainer, build_optimizer
from backbones_tools.engine import trainer as trainer_mod
from backbones_tools.engine.data import DataRootError, SeededAugmentation, build_eval_loader, prepare_data_root
from backbones_tools.engine.metrics import read_jsonl
from backbones_tools.engine.tasks import (
    DetectionTask,
    SegmentationTask,
    _check_num_classes,
    build_detection_model,
    build_segmentation_model,
    make_task,
)
from PIL import Image
from pydantic import BaseModel
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from tests.test_train_det import DEMO as DET_DEMO
from tests.test_train_det import SHAPES as DET_SHAPES
from tests.test_train_det import tiny_overrides as det_overrides
from tests.test_train_seg import DEMO as SEG_DEMO
from tests.test_train_seg import SHAPES as SEG_SHAPES
from tests.test_train_seg import tiny_overrides as seg_overrides

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
#: norm layer classes (the trunk's FrozenBN is torchvision's)
NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, FrozenBatchNorm2d)

#: dotted config field -> the test that shows it changing what runs: a test function of this file,
#: or "tests/<file>.py::<test>" for an existing test that already shows it on values.
COVERED: dict[str, str] = {
    "task": "test_task_picks_the_adapter_and_the_model",
    "output_dir": "test_output_dir_is_the_run_folder",
    # ---------------------------------------------------------------- model (both tasks)
    "model.backbone.name": "test_backbone_name_sets_the_trunk_depth",
    "model.backbone.weights": "tests/test_training_trust.py::test_a_plain_trunk_file_initialises_the_trunk",
    "model.backbone.norm": "test_backbone_norm_sets_the_norm_layers",
    "model.backbone.norm_eval": "test_backbone_norm_eval_freezes_batch_norm_statistics",
    "model.backbone.frozen_stages": "test_backbone_frozen_stages_freezes_stem_and_stages",
    "model.backbone.style": "test_backbone_style_moves_the_stride",
    "model.backbone.output_stride": "test_backbone_output_stride_dilates_the_detector_trunk",
    "model.backbone.multi_grid": "test_backbone_multi_grid_dilates_the_last_stage_blocks",
    "model.backbone.checkpointing": "test_backbone_checkpointing_recomputes_blocks_in_backward",
    "model.backbone.drop_path_rate": "test_backbone_drop_path_rate_sets_stochastic_depth",
    "model.backbone.zero_init_residual": "test_backbone_zero_init_residual_zeroes_the_last_norms",
    "model.backbone.dcn_stages": "test_backbone_dcn_stages_make_3x3_convs_deformable",
    "model.num_classes": "test_num_classes_is_checked_against_the_dataset",
    "model.options": "test_model_options_reach_the_detector",
    "model.weights": "test_model_weights_start_the_whole_model_from_a_checkpoint",
    "model.kind": "test_model_kind_builds_that_model",
    # ---------------------------------------------------------------- model (detection)
    "model.fpn.out_channels": "test_fpn_out_channels_sets_the_pyramid_width",
    "model.fpn.norm": "test_fpn_norm_puts_norm_layers_in_the_pyramid",
    "model.box_head_dim": "test_box_head_dim_sets_the_box_head_width",
    # ---------------------------------------------------------------- model (segmentation)
    "model.output_stride": "test_seg_output_stride_sets_the_trunk_stride",
    "model.aux": "test_seg_aux_adds_the_auxiliary_head",
    "model.aux_weight": "tests/test_training_trust.py::test_aux_weight_is_the_weight_optimised_and_logged",
    "model.class_balance": "test_seg_class_balance_weights_the_loss",
    "model.ignore_index": "tests/test_training_trust.py::test_ignore_index_is_carried_through_masks_padding_and_loss",
    # ---------------------------------------------------------------- data
    "data.root": "test_data_root_is_where_the_dataset_is_read",
    "data.generate_shapes": "test_generate_shapes_writes_the_dataset",
    "data.shapes.num_train": "test_shapes_num_train_and_num_val_set_the_split_sizes",
    "data.shapes.num_val": "test_shapes_num_train_and_num_val_set_the_split_sizes",
    "data.shapes.seed": "test_shapes_seed_sets_the_generated_content",
    "data.shapes.image_size": "test_shapes_image_size_sets_the_shorter_side",
    "data.shapes.max_objects": "test_shapes_max_objects_caps_the_objects_per_image",
    "data.shapes.min_object_size": "test_shapes_object_sizes_bound_the_boxes",
    "data.shapes.max_object_size": "test_shapes_object_sizes_bound_the_boxes",
    "data.train_split": "test_splits_choose_the_annotation_files",
    "data.val_split": "test_splits_choose_the_annotation_files",
    "data.categories": "tests/test_training_trust.py::test_detection_on_a_category_subset_trains_and_scores_only_the_subset",
    "data.batch_size": "test_batch_size_sets_the_images_per_iteration",
    "data.eval_batch_size": "test_eval_batch_size_sets_the_val_loader_batch",
    "data.num_workers": "test_num_workers_sets_the_loader_processes",
    "data.aspect_ratio_grouping": "test_aspect_ratio_grouping_batches_alike_images",
    "data.group_factor": "test_group_factor_sets_the_aspect_ratio_bins",
    "data.max_train_images": "test_max_images_cut_the_datasets",
    "data.max_val_images": "test_max_images_cut_the_datasets",
    "data.skip_invalid": "tests/test_preflight.py::test_skip_invalid_trains_on_the_rest_and_reports_what_was_dropped",
    "data.det_aug.min_sizes": "test_det_aug_min_sizes_set_the_shorter_side",
    "data.det_aug.max_size": "test_det_aug_max_size_caps_the_longer_side",
    "data.det_aug.flip_prob": "test_det_aug_flip_prob_mirrors_images_and_boxes",
    "data.det_aug.photometric": "test_det_aug_photometric_jitters_colours",
    "data.seg_aug.base_size": "test_seg_aug_base_size_sets_the_resized_shorter_side",
    "data.seg_aug.crop_size": "test_seg_aug_crop_size_sets_the_training_size",
    "data.seg_aug.scale_range": "test_seg_aug_scale_range_scales_the_content",
    "data.seg_aug.flip_prob": "test_seg_aug_flip_prob_mirrors_images_and_masks",
    "data.seg_aug.photometric": "test_seg_aug_photometric_jitters_colours",
    "data.seg_aug.eval_size": "test_seg_aug_eval_size_resizes_val_images",
    # ---------------------------------------------------------------- optim
    "optim.name": "tests/test_engine.py::test_frozen_parameters_are_left_out_and_adamw",
    "optim.lr": "test_optim_lr_and_base_batch_size_set_the_group_lrs",
    "optim.base_batch_size": "test_optim_lr_and_base_batch_size_set_the_group_lrs",
    "optim.momentum": "test_optim_momentum_and_nesterov_reach_sgd",
    "optim.nesterov": "test_optim_momentum_and_nesterov_reach_sgd",
    "optim.betas": "test_optim_betas_reach_adamw",
    "optim.weight_decay": "test_optim_weight_decay_sets_the_decayed_groups",
    "optim.norm_bias_decay": "tests/test_engine.py::test_frozen_parameters_are_left_out_and_adamw",
    "optim.backbone_lr_mult": "tests/test_engine.py::test_parameter_groups_no_decay_on_norm_and_bias_and_trunk_multiplier",
    "optim.clip_grad_norm": "test_clip_grad_norm_bounds_the_update",
    "optim.fused": "tests/test_engine.py::test_fused_optimizer_steps_like_the_foreach_one",
    # ---------------------------------------------------------------- schedule
    "schedule.name": "tests/test_engine.py::test_decaying_schedules_reach_the_floor",
    "schedule.horizon": "tests/test_engine.py::test_time_horizon_decays_over_the_time_budget",
    "schedule.milestones": "test_step_schedule_milestones_and_gamma",
    "schedule.gamma": "test_step_schedule_milestones_and_gamma",
    "schedule.power": "test_poly_power_shapes_the_decay",
    "schedule.min_lr_ratio": "tests/test_engine.py::test_decaying_schedules_reach_the_floor",
    "schedule.warmup_iters": "test_warmup_iters_and_factor_set_the_first_lrs",
    "schedule.warmup_factor": "test_warmup_iters_and_factor_set_the_first_lrs",
    # ---------------------------------------------------------------- train
    "train.epochs": "test_epochs_and_max_iters_set_the_iterations_run",
    "train.max_iters": "test_epochs_and_max_iters_set_the_iterations_run",
    "train.time_limit_s": "tests/test_train_det.py::test_time_horizon_run_stops_at_the_time_limit_fully_decayed",
    "train.seed": "test_seed_sets_the_initial_weights",
    "train.deterministic": "test_deterministic_turns_on_deterministic_algorithms",
    "train.device": "test_device_places_the_run",
    "train.amp": "test_amp_sets_the_autocast_dtype",
    "train.sync_bn": "test_sync_bn_converts_the_norms_under_ddp",
    "train.log_every": "test_log_every_sets_the_logged_iterations",
    "train.grad_norm_per_stage": "test_grad_norm_per_stage_logs_the_stage_norms",
    "train.checkpoint_every_iters": "test_checkpoint_every_iters_saves_mid_epoch",
    "train.eval_every": "test_eval_every_sets_the_evaluated_epochs",
    "train.num_threads": "test_num_threads_sets_the_torch_threads",
    "train.channels_last": "tests/test_train_det.py::test_cpu_speedups_take_effect_and_train_alike",
    "train.fast_roi_align": "tests/test_train_det.py::test_cpu_speedups_take_effect_and_train_alike",
    "train.tensorboard": "tests/test_tensorboard.py::test_tensorboard_mirrors_the_jsonl_scalars",
    # ---------------------------------------------------------------- eval
    "eval.backend": "test_eval_backend_picks_the_coco_implementation",
    "eval.best_metric": "test_best_metric_picks_the_checkpointed_metric",
    "eval.visualize": "test_visualize_sets_the_number_of_drawn_images",
    "eval.score_thresh": "test_score_thresh_sets_what_the_drawing_keeps",
}


# ============================================================================= the meta-test


def _section(annotation: typing.Any) -> type[BaseModel] | None:
    """The section class of a field (also inside ``X | None`` and the like), else None."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def leaf_fields(schema: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted names of every leaf field of ``schema`` (nested sections walked)."""
    names = []
    for name, field in schema.model_fields.items():
        sub = _section(field.annotation)
        names += leaf_fields(sub, f"{prefix}{name}.") if sub is not None else [f"{prefix}{name}"]
    return names


def schema_leaves(schemas: typing.Iterable[type[BaseModel]] = (DetTrainConfig, SegTrainConfig)) -> list[str]:
    return sorted({name for schema in schemas for name in leaf_fields(schema)})


def uncovered(schemas: typing.Iterable[type[BaseModel]], covered: typing.Mapping[str, str]) -> list[str]:
    return [name for name in schema_leaves(schemas) if name not in covered]


def _test_exists(ref: str) -> bool:
    if "::" in ref:
        file, _, name = ref.partition("::")
        path = REPO / file
        return path.is_file() and re.search(rf"^def {re.escape(name)}\(", path.read_text(encoding="utf-8"),
                                             re.MULTILINE) is not None
    fn = globals().get(ref)
    return ref.startswith("test_") and callable(fn) and getattr(fn, "__module__", None) == __name__


def test_every_config_field_is_shown_to_change_what_runs() -> None:
    leaves = schema_leaves()
    assert len(leaves) > 80  # the walk reached the nested sections
    missing = uncovered((DetTrainConfig, SegTrainConfig), COVERED)
    assert not missing, f"config fields without a test showing they change what runs: {missing}"
    stale = sorted(set(COVERED) - set(leaves))
    assert not stale, f"COVERED names fields the schema no longer has: {stale}"
    broken = {field: ref for field, ref in COVERED.items() if not _test_exists(ref)}
    assert not broken, f"COVERED points at tests that do not exist: {broken}"


class _ExtraSection(Section):
    knob: int = 0


class _GrownDetConfig(DetTrainConfig):
    """The schema with a new top-level field and a new nested section (for the test below)."""

    new_top: bool = False
    extra: _ExtraSection | None = None


def test_the_meta_test_catches_a_new_field() -> None:
    assert uncovered((_GrownDetConfig,), COVERED) == ["extra.knob", "new_top"]
    assert not _test_exists("test_no_such_test") and not _test_exists("tests/test_engine.py::test_no_such_test")
    assert _test_exists("tests/test_engine.py::test_warmup_then_step_schedule")


# ============================================================================= fixtures and helpers


@pytest.fixture(scope="module")
def det_root(module_tmp) -> Path:
    root = module_tmp("fields_det")
    make_shapes_dataset(root, **DET_SHAPES)
    return root


@pytest.fixture(scope="module")
def seg_root(module_tmp) -> Path:
    root = module_tmp("fields_seg")
    make_shapes_dataset(root, **SEG_SHAPES)
    return root


def det_cfg(root: Path, *extra: str, epochs: int = 1) -> TrainConfig:
    return load_config(DET_DEMO, det_overrides(root, epochs) + list(extra))


def seg_cfg(root: Path, *extra: str, epochs: int = 1) -> TrainConfig:
    return load_config(SEG_DEMO, seg_overrides(root, epochs) + list(extra))


def datasets(cfg: TrainConfig):
    """What the Trainer builds first: the data root, the task adapter and both datasets."""
    root = prepare_data_root(cfg.data, DistContext(), (cfg.data.train_split, cfg.data.val_split))
    task = make_task(cfg, root)
    train_ds, val_ds = task.build_datasets()
    return task, train_ds, val_ds


def det_model(cfg: TrainConfig) -> nn.Module:
    return build_detection_model(cfg, num_classes=4)


def seg_model(cfg: TrainConfig) -> nn.Module:
    return build_segmentation_model(cfg, num_classes=4)


def trunk_blocks(trunk: nn.Module) -> list[nn.Module]:
    return [block for name in ("layer1", "layer2", "layer3", "layer4") for block in getattr(trunk, name)]


def square_indices(ds) -> list[int]:
    return [i for i, img_id in enumerate(ds.ids) if ds.coco.imgs[img_id]["width"] == ds.coco.imgs[img_id]["height"]]


def content_extent(mask: torch.Tensor, pad: int) -> tuple[int, int]:
    """Rows and columns of a padded mask that hold anything but the padding label."""
    inside = mask != pad
    return int(inside.any(1).sum()), int(inside.any(0).sum())


@pytest.fixture(scope="module")
def det_trainer(det_root: Path, module_tmp) -> Trainer:
    """The tiny detection run, constructed (not trained); tests only read it."""
    return Trainer(det_cfg(det_root), module_tmp("det_trainer"))


# ============================================================================= top level


def test_task_picks_the_adapter_and_the_model(det_root: Path, seg_root: Path) -> None:
    det, seg = det_cfg(det_root), seg_cfg(seg_root)
    det_task, seg_task = make_task(det, det_root), make_task(seg, seg_root)
    assert type(det_task) is DetectionTask and type(seg_task) is SegmentationTask
    assert det_task.trunk_prefixes == ("backbone.body.",) and seg_task.trunk_prefixes == ("backbone.",)
    assert type(det_task.build_model(4)).__name__ == "FasterRCNN"
    assert type(seg_task.build_model(4)).__name__ == "DeepLabV3Plus"


def test_output_dir_is_the_run_folder(tmp_path: Path, monkeypatch) -> None:
    from backbones_tools.engine.cli import main as cli_main

    seen: list[Path] = []

    def fake_train(cfg, output_dir, *, resume=False):
        seen.append(Path(output_dir))
        return trainer_mod.RunResult(Path(output_dir))

    import backbones

    kept: list[bool] = []
    monkeypatch.setattr(trainer_mod, "train", fake_train)
    monkeypatch.setattr(backbones, "keep_freed_memory", lambda: kept.append(True) or True)
    monkeypatch.chdir(tmp_path)  # the default run folder is relative to the working directory
    assert cli_main("det", ["--set", f"output_dir={tmp_path / 'mine'}"]) == 0
    assert cli_main("det", []) == 0
    assert [p.resolve() for p in seen] == [tmp_path / "mine", tmp_path / "runs" / "det" / "demo_shapes_faster_rcnn_r18"]
    assert kept == [True, True]  # the training process keeps freed memory (backbones.keep_freed_memory)


# ============================================================================= model


def test_model_kind_builds_that_model(det_root: Path, seg_root: Path) -> None:
    def det(kind: str) -> nn.Module:
        data, _ = load_config_dict(DET_DEMO, det_overrides(det_root))
        # RetinaNet takes none of the R-CNN options of the demo
        data["model"].update(kind=kind, box_head_dim=None, options={"min_size": 64, "max_size": 80})
        return det_model(validate_config(data))

    rcnn, retina = det("faster_rcnn"), det("retinanet")
    assert type(rcnn).__name__ == "FasterRCNN" and type(retina).__name__ == "RetinaNet"
    assert rcnn.roi_heads.box_predictor.cls_score.out_features == 5  # background + 4 classes
    assert retina.head.classification_head.num_classes == 4

    v3 = seg_model(seg_cfg(seg_root, "model.kind=deeplabv3"))
    v3plus = seg_model(seg_cfg(seg_root, "model.kind=deeplabv3plus"))
    assert type(v3).__name__ == "DeepLabV3" and type(v3plus).__name__ == "DeepLabV3Plus"
    x = torch.randn(1, 3, 64, 64)
    v3.eval(), v3plus.eval()
    with torch.no_grad():  # V3+ reads c2 too: its decoder has a low-level projection V3 lacks
        assert v3(x)["out"].shape == v3plus(x)["out"].shape == (1, 5, 64, 64)
    assert sum(p.numel() for p in v3plus.classifier.parameters()) != sum(p.numel() for p in v3.classifier.parameters())


def test_backbone_name_sets_the_trunk_depth(det_root: Path) -> None:
    depth = {}
    for name in ("resnet18", "resnet34"):
        body = det_model(det_cfg(det_root, f"model.backbone.name={name}")).backbone.body
        depth[name] = [len(getattr(body, f"layer{i}")) for i in range(1, 5)]
    assert depth == {"resnet18": [2, 2, 2, 2], "resnet34": [3, 4, 6, 3]}


def test_backbone_norm_sets_the_norm_layers(det_root: Path) -> None:
    kinds = {}
    for norm in ("BN", "GN", "FrozenBN"):
        body = det_model(det_cfg(det_root, f"model.backbone.norm={norm}")).backbone.body
        kinds[norm] = {type(m).__name__ for m in body.modules()
                       if isinstance(m, NORMS)}
    assert kinds == {"BN": {"BatchNorm2d"}, "GN": {"GroupNorm"}, "FrozenBN": {"FrozenBatchNorm2d"}}


def test_backbone_norm_eval_freezes_batch_norm_statistics(det_root: Path) -> None:
    x = torch.randn(2, 3, 64, 64) * 3 + 1
    for on in (False, True):
        body = det_model(det_cfg(det_root, f"model.backbone.norm_eval={on}")).backbone.body
        body.train()
        before = body.bn1.running_mean.clone()
        with torch.no_grad():
            body(x)
        assert body.bn1.training is not on
        assert torch.equal(body.bn1.running_mean, before) is on  # statistics frozen only with norm_eval


def test_backbone_frozen_stages_freezes_stem_and_stages(det_root: Path) -> None:
    def trainable(frozen: int) -> dict[str, bool]:
        body = det_model(det_cfg(det_root, f"model.backbone.frozen_stages={frozen}")).backbone.body
        return {name: all(p.requires_grad for p in getattr(body, name).parameters())
                for name in ("conv1", "layer1", "layer2", "layer3")}

    assert trainable(-1) == {"conv1": True, "layer1": True, "layer2": True, "layer3": True}
    assert trainable(0) == {"conv1": False, "layer1": True, "layer2": True, "layer3": True}
    assert trainable(2) == {"conv1": False, "layer1": False, "layer2": False, "layer3": True}


def test_backbone_style_moves_the_stride(seg_root: Path) -> None:
    strides = {}
    for style in ("pytorch", "caffe"):
        trunk = seg_model(seg_cfg(seg_root, "model.backbone.name=resnet50", f"model.backbone.style={style}")).backbone
        block = trunk.layer2[0]
        strides[style] = (block.conv1.stride, block.conv2.stride)
    assert strides == {"pytorch": ((1, 1), (2, 2)), "caffe": ((2, 2), (1, 1))}


def test_backbone_output_stride_dilates_the_detector_trunk(det_root: Path) -> None:
    x = torch.randn(1, 3, 64, 64)
    sizes = {}
    for stride in (32, 16):
        body = det_model(det_cfg(det_root, f"model.backbone.output_stride={stride}")).backbone.body
        body.eval()
        with torch.no_grad():
            sizes[stride] = body(x)["c5"].shape[-1]
    assert sizes == {32: 2, 16: 4}


def test_backbone_multi_grid_dilates_the_last_stage_blocks(det_root: Path) -> None:
    dilations = {}
    for grid in ("null", "[1, 2]"):
        body = det_model(det_cfg(det_root, f"model.backbone.multi_grid={grid}")).backbone.body
        dilations[grid] = [block.conv2.dilation for block in body.layer4]
    assert dilations == {"null": [(1, 1), (1, 1)], "[1, 2]": [(1, 1), (2, 2)]}


def test_backbone_checkpointing_recomputes_blocks_in_backward(det_root: Path) -> None:
    calls = {}
    for on in (False, True):
        body = det_model(det_cfg(det_root, f"model.backbone.checkpointing={on}")).backbone.body
        body.train()
        count = [0]
        body.layer2[0].conv1.register_forward_hook(lambda *args: count.__setitem__(0, count[0] + 1))
        body(torch.randn(2, 3, 64, 64))["c5"].square().mean().backward()
        calls[on] = count[0]
    assert calls == {False: 1, True: 2}  # recomputed in the backward pass


def test_backbone_drop_path_rate_sets_stochastic_depth(det_root: Path) -> None:
    rates = {}
    for rate in (0.0, 0.35):
        body = det_model(det_cfg(det_root, f"model.backbone.drop_path_rate={rate}")).backbone.body
        rates[rate] = [getattr(b.drop_path, "p", 0.0) for b in trunk_blocks(body)]
    assert rates[0.0] == [0.0] * 8
    assert rates[0.35] == pytest.approx([0.35 * i / 7 for i in range(8)])


def test_backbone_zero_init_residual_zeroes_the_last_norms(det_root: Path) -> None:
    for on in (False, True):
        body = det_model(det_cfg(det_root, f"model.backbone.zero_init_residual={on}")).backbone.body
        scales = torch.cat([b.bn2.weight.detach() for b in trunk_blocks(body)])
        assert torch.equal(scales, torch.zeros_like(scales) if on else torch.ones_like(scales))


def test_backbone_dcn_stages_make_3x3_convs_deformable(seg_root: Path) -> None:
    kinds = {}
    for stages in ("[]", "[3]"):
        trunk = seg_model(seg_cfg(seg_root, "model.backbone.name=resnet50",
                                  f"model.backbone.dcn_stages={stages}")).backbone
        kinds[stages] = [type(getattr(trunk, f"layer{i}")[0].conv2).__name__ for i in range(1, 5)]
    assert kinds == {"[]": ["Conv2d"] * 4, "[3]": ["Conv2d", "Conv2d", "DeformConv3x3", "Conv2d"]}


def test_num_classes_is_checked_against_the_dataset(det_root: Path) -> None:
    task, _, _ = datasets(det_cfg(det_root))
    assert _check_num_classes(det_cfg(det_root, "model.num_classes=4"), task.category_map) == 4
    with pytest.raises(ConfigError, match="model.num_classes=3 but the dataset's category map has 4"):
        _check_num_classes(det_cfg(det_root, "model.num_classes=3"), task.category_map)


def test_a_refused_model_option_or_ignore_index_is_a_config_error(det_root: Path, seg_root: Path) -> None:
    with pytest.raises(ConfigError, match="model: unknown option.*bogus"):
        make_task(det_cfg(det_root, "model.options.bogus=1"), det_root).build_model(4)
    with pytest.raises(ConfigError, match="model.ignore_index: ignore_index=2 must be above the 4 class"):
        datasets(seg_cfg(seg_root, "model.ignore_index=2"))


def test_model_options_reach_the_detector(det_root: Path, seg_root: Path) -> None:
    a = det_model(det_cfg(det_root, "model.options.min_size=64", "model.options.box_score_thresh=0.2"))
    b = det_model(det_cfg(det_root, "model.options.min_size=96", "model.options.box_score_thresh=0.6"))
    assert (a.transform.min_size, a.roi_heads.score_thresh) == ((64,), 0.2)
    assert (b.transform.min_size, b.roi_heads.score_thresh) == ((96,), 0.6)
    narrow = seg_model(seg_cfg(seg_root, "model.options.aspp_channels=8"))
    wide = seg_model(seg_cfg(seg_root, "model.options.aspp_channels=24"))
    assert narrow.classifier.aspp.project[0].out_channels == 8 and wide.classifier.aspp.project[0].out_channels == 24


def test_model_weights_start_the_whole_model_from_a_checkpoint(det_root: Path, tmp_path: Path) -> None:
    cfg = det_cfg(det_root)
    start = {k: v + 0.25 if v.is_floating_point() else v for k, v in det_model(cfg).state_dict().items()}
    torch.save({"model": start}, tmp_path / "start.pth")
    trainer = Trainer(det_cfg(det_root, f"model.weights={tmp_path / 'start.pth'}"), tmp_path / "run")
    loaded = trainer.model_without_ddp.state_dict()
    floats = [k for k, v in start.items() if v.is_floating_point()]
    assert len(floats) > 100
    for key in floats:
        assert torch.equal(loaded[key], start[key]), key
    assert trainer.init_records["model_weights"]["loaded"] >= len(floats)


def test_fpn_out_channels_sets_the_pyramid_width(det_root: Path) -> None:
    x = torch.randn(1, 3, 64, 64)
    for width in (16, 24):
        model = det_model(det_cfg(det_root, f"model.fpn.out_channels={width}"))
        model.eval()
        with torch.no_grad():
            levels = model.backbone(x)
        assert {v.shape[1] for v in levels.values()} == {width}


def test_fpn_norm_puts_norm_layers_in_the_pyramid(det_root: Path) -> None:
    kinds = {}
    for norm in ("null", "BN", "GN"):
        fpn = det_model(det_cfg(det_root, f"model.fpn.norm={norm}")).backbone.fpn
        kinds[norm] = {type(m).__name__ for m in fpn.modules() if isinstance(m, NORMS)}
    assert kinds == {"null": set(), "BN": {"BatchNorm2d"}, "GN": {"GroupNorm"}}


def test_box_head_dim_sets_the_box_head_width(det_root: Path) -> None:
    for dim in (32, 48):
        heads = det_model(det_cfg(det_root, f"model.box_head_dim={dim}")).roi_heads
        assert heads.box_head.fc7.out_features == dim and heads.box_predictor.cls_score.in_features == dim


def test_seg_output_stride_sets_the_trunk_stride(seg_root: Path) -> None:
    x = torch.randn(1, 3, 64, 64)
    sizes = {}
    for stride in (8, 16):
        trunk = seg_model(seg_cfg(seg_root, f"model.output_stride={stride}")).backbone
        trunk.eval()
        with torch.no_grad():
            sizes[stride] = trunk(x)["c5"].shape[-1]
    assert sizes == {8: 8, 16: 4}


def test_seg_aux_adds_the_auxiliary_head(seg_root: Path) -> None:
    x = torch.randn(1, 3, 64, 64)
    for on in (False, True):
        model = seg_model(seg_cfg(seg_root, f"model.aux={on}"))
        model.eval()
        with torch.no_grad():
            out = model(x)
        assert (model.aux_classifier is not None) is on
        if on:
            assert out["aux"].shape == out["out"].shape and not torch.equal(out["aux"], out["out"])
        else:
            assert list(out) == ["out"]


def test_seg_class_balance_weights_the_loss(seg_root: Path) -> None:
    from heads import segmentation_loss

    base = seg_cfg(seg_root)
    task, train_ds, _ = datasets(base)
    model = seg_model(base).eval()  # eval: no dropout, the same logits for every loss
    images, masks = task.collate([train_ds[i] for i in range(2)])
    totals = {}
    for power in (0.0, 1.0):
        cfg = seg_cfg(seg_root, f"model.class_balance={power}")
        with torch.no_grad():
            total, _ = SegmentationTask(cfg, seg_root).loss_terms(model, (images, masks), CPU)
            expected = segmentation_loss(model(images), masks, aux_weight=cfg.model.aux_weight, class_balance=power)
        assert float(total) == pytest.approx(float(expected["loss"]), rel=1e-6)
        totals[power] = float(total)
    assert totals[0.0] != pytest.approx(totals[1.0], rel=1e-3)


# ============================================================================= data


def test_data_root_is_where_the_dataset_is_read(det_root: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(det_root, other)
    ann = other / "annotations" / "instances_val2017.json"
    data = json.loads(ann.read_text())
    dropped = data["images"][0]["id"]
    data["images"] = data["images"][1:]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != dropped]
    ann.write_text(json.dumps(data))
    _, _, val_here = datasets(det_cfg(det_root))
    _, _, val_there = datasets(det_cfg(other, "data.generate_shapes=false"))
    assert (len(val_here), len(val_there)) == (4, 3)
    assert val_there.image_dir == other / "val2017" and val_here.image_dir == det_root / "val2017"


def test_generate_shapes_writes_the_dataset(tmp_path: Path) -> None:
    root = tmp_path / "fresh"
    shapes = [f"data.shapes.{k}={v}" for k, v in DET_SHAPES.items()]
    off = load_config(DET_DEMO, [f"data.root={root}", "data.generate_shapes=false", *shapes])
    with pytest.raises(DataRootError, match="does not exist"):
        prepare_data_root(off.data, DistContext(), ("train2017", "val2017"))
    on = load_config(DET_DEMO, [f"data.root={root}", "data.generate_shapes=true", *shapes])
    assert prepare_data_root(on.data, DistContext(), ("train2017", "val2017")) == root
    assert len(list((root / "train2017").iterdir())) == DET_SHAPES["num_train"]


SMALL_SHAPES = dict(num_train=6, num_val=2, seed=0, image_size=64, max_objects=3, min_object_size=6.0,
                    max_object_size=20.0)


def generated(tmp_path: Path, name: str, **changes) -> dict[str, dict]:
    """The annotation files of a shapes dataset generated through ``data.shapes`` (+ changes)."""
    params = {**SMALL_SHAPES, **changes}
    cfg = load_config(DET_DEMO, [f"data.root={tmp_path / name}", "data.generate_shapes=true",
                                 *(f"data.shapes.{k}={v}" for k, v in params.items())])
    root = prepare_data_root(cfg.data, DistContext(), ("train2017", "val2017"))
    return {split: json.loads((root / "annotations" / f"instances_{split}.json").read_text())
            for split in ("train2017", "val2017")}


def test_shapes_num_train_and_num_val_set_the_split_sizes(tmp_path: Path) -> None:
    a = generated(tmp_path, "a")
    b = generated(tmp_path, "b", num_train=3, num_val=4)
    assert (len(a["train2017"]["images"]), len(a["val2017"]["images"])) == (6, 2)
    assert (len(b["train2017"]["images"]), len(b["val2017"]["images"])) == (3, 4)


def test_shapes_seed_sets_the_generated_content(tmp_path: Path) -> None:
    def boxes(d):
        return [a["bbox"] for a in d["train2017"]["annotations"]]

    a, again, b = generated(tmp_path, "a"), generated(tmp_path, "again"), generated(tmp_path, "b", seed=1)
    assert boxes(a) == boxes(again) and boxes(a) != boxes(b)


def test_shapes_image_size_sets_the_shorter_side(tmp_path: Path) -> None:
    for size in (64, 80):
        images = generated(tmp_path, f"s{size}", image_size=size)["train2017"]["images"]
        assert {min(i["width"], i["height"]) for i in images} == {size}


def _objects_per_image(d: dict) -> list[int]:
    counts = {i["id"]: 0 for i in d["images"]}
    for a in d["annotations"]:
        if not a["iscrowd"]:
            counts[a["image_id"]] += 1
    return list(counts.values())


def test_shapes_max_objects_caps_the_objects_per_image(tmp_path: Path) -> None:
    one = generated(tmp_path, "one", max_objects=1, num_train=8)["train2017"]
    five = generated(tmp_path, "five", max_objects=5, num_train=8)["train2017"]
    assert max(_objects_per_image(one)) == 1
    assert max(_objects_per_image(five)) > 1


def test_shapes_object_sizes_bound_the_boxes(tmp_path: Path) -> None:
    def sides(**changes) -> list[float]:  # one object per image: none occluded, boxes = whole shapes
        d = generated(tmp_path, "_".join(f"{k}{v}" for k, v in changes.items()), max_objects=1, num_train=10,
                      **changes)["train2017"]
        return [max(a["bbox"][2], a["bbox"][3]) for a in d["annotations"] if not a["iscrowd"]]

    small, large = sides(min_object_size=6.0, max_object_size=12.0), sides(min_object_size=24.0, max_object_size=30.0)
    assert max(small) <= 13 and min(large) >= 23
    wide = sides(min_object_size=6.0, max_object_size=30.0)
    assert min(wide) < 23 and max(wide) > 13


def test_splits_choose_the_annotation_files(det_root: Path) -> None:
    _, train_ds, val_ds = datasets(det_cfg(det_root))
    _, swapped_train, swapped_val = datasets(det_cfg(det_root, "data.train_split=val2017",
                                                     "data.val_split=train2017"))
    assert (len(train_ds), len(val_ds)) == (8, 4)
    assert (len(swapped_train), len(swapped_val)) == (4, 8)
    assert swapped_train.image_dir == det_root / "val2017" and swapped_val.image_dir == det_root / "train2017"


def test_batch_size_sets_the_images_per_iteration(det_trainer: Trainer, det_root: Path, tmp_path: Path) -> None:
    four = Trainer(det_cfg(det_root, "data.batch_size=4"), tmp_path / "run")
    assert [len(b) for b in det_trainer.batch_sampler] == [2] * 4
    assert [len(b) for b in four.batch_sampler] == [4] * 2
    images, _ = next(iter(four.train_loader))
    assert len(images) == 4 and (det_trainer.iters_per_epoch, four.iters_per_epoch) == (4, 2)


def test_eval_batch_size_sets_the_val_loader_batch(det_trainer: Trainer, det_root: Path, tmp_path: Path) -> None:
    two = Trainer(det_cfg(det_root, "data.eval_batch_size=2"), tmp_path / "run")
    assert [len(images) for images, _ in det_trainer.val_loader] == [1, 1, 1, 1]
    assert [len(images) for images, _ in two.val_loader] == [2, 2]


def test_num_workers_sets_the_loader_processes(det_trainer: Trainer, det_root: Path, tmp_path: Path) -> None:
    three = Trainer(det_cfg(det_root, "data.num_workers=3"), tmp_path / "run")
    assert (det_trainer.train_loader.num_workers, det_trainer.val_loader.num_workers) == (0, 0)
    assert (three.train_loader.num_workers, three.val_loader.num_workers) == (3, 2)  # evaluation: at most 2


def test_aspect_ratio_grouping_batches_alike_images(det_root: Path, tmp_path: Path) -> None:
    # group factor 6: square (1.0) and 5:4 landscape (1.25) images fall in different bins
    grouped = Trainer(det_cfg(det_root, "data.group_factor=6"), tmp_path / "on")
    ratios = grouped.train_ds.aspect_ratios()
    groups = aspect_ratio_group_ids(ratios, 6)
    assert len(set(groups)) > 1  # the tiny dataset mixes square and 5:4 images
    assert grouped.batch_sampler.group_ids == groups
    assert all(len({groups[i] for i in batch}) == 1 for batch in grouped.batch_sampler)
    plain = Trainer(det_cfg(det_root, "data.group_factor=6", "data.aspect_ratio_grouping=false"),
                    tmp_path / "off").batch_sampler
    assert plain.group_ids == [0] * len(ratios)
    assert any(len({groups[i] for i in batch}) > 1 for batch in plain)  # mixed batches without grouping


def test_group_factor_sets_the_aspect_ratio_bins(det_trainer: Trainer, det_root: Path, tmp_path: Path) -> None:
    ratios = det_trainer.train_ds.aspect_ratios()
    one = Trainer(det_cfg(det_root, "data.group_factor=0"), tmp_path / "run").batch_sampler.group_ids
    assert det_trainer.batch_sampler.group_ids == aspect_ratio_group_ids(ratios, 3)
    assert one == aspect_ratio_group_ids(ratios, 0) != det_trainer.batch_sampler.group_ids
    assert set(one) <= {0, 1}  # k = 0: portrait or not


def test_max_images_cut_the_datasets(det_root: Path) -> None:
    _, train_ds, val_ds = datasets(det_cfg(det_root))
    _, cut_train, cut_val = datasets(det_cfg(det_root, "data.max_train_images=3", "data.max_val_images=2"))
    assert (len(train_ds), len(val_ds), len(cut_train), len(cut_val)) == (8, 4, 3, 2)
    assert cut_train.ids == train_ds.ids[:3] and cut_val.ids == val_ds.ids[:2]


def test_det_aug_min_sizes_set_the_shorter_side(det_root: Path) -> None:
    for size in (48, 72):
        _, train_ds, _ = datasets(det_cfg(det_root, f"data.det_aug.min_sizes=[{size}]", "data.det_aug.max_size=200"))
        assert {min(train_ds[i][0].shape[1:]) for i in range(len(train_ds))} == {size}


def test_det_aug_max_size_caps_the_longer_side(det_root: Path) -> None:
    longest = {}
    for cap in (40, 200):
        _, train_ds, _ = datasets(det_cfg(det_root, "data.det_aug.min_sizes=[64]", f"data.det_aug.max_size={cap}"))
        longest[cap] = max(max(train_ds[i][0].shape[1:]) for i in range(len(train_ds)))
    assert longest == {40: 40, 200: 80}  # 5:4 images at shorter side 64 are 80 long


def test_det_aug_flip_prob_mirrors_images_and_boxes(det_root: Path) -> None:
    common = ("data.det_aug.min_sizes=[64]", "data.det_aug.max_size=200", "data.det_aug.photometric=false")
    _, plain, _ = datasets(det_cfg(det_root, *common, "data.det_aug.flip_prob=0.0"))
    _, flipped, _ = datasets(det_cfg(det_root, *common, "data.det_aug.flip_prob=1.0"))
    squares = square_indices(plain)
    assert len(squares) >= 2
    for i in squares:  # square 64-px images: the resize is the identity, only the flip acts
        raw = torch.from_numpy(plain.load_image(i)).permute(2, 0, 1).float() / 255
        (img0, t0), (img1, t1) = plain[i], flipped[i]
        assert torch.allclose(img0, raw, atol=1 / 255)  # never flipped
        assert torch.allclose(img1, raw.flip(-1), atol=1 / 255)  # always flipped
        w = img0.shape[-1]
        mirrored = torch.stack([w - t0["boxes"][:, 2], t0["boxes"][:, 1], w - t0["boxes"][:, 0], t0["boxes"][:, 3]], 1)
        assert torch.allclose(t1["boxes"], mirrored, atol=1e-3)
    assert not torch.allclose(raw, raw.flip(-1), atol=1 / 255)


def test_det_aug_photometric_jitters_colours(det_root: Path) -> None:
    common = ("data.det_aug.min_sizes=[64]", "data.det_aug.max_size=200", "data.det_aug.flip_prob=0.0")
    images = {}
    for on in (False, True):
        _, train_ds, _ = datasets(det_cfg(det_root, *common, f"data.det_aug.photometric={on}"))
        seeded = SeededAugmentation(train_ds, seed=0)
        images[on] = [seeded[i][0] for i in square_indices(train_ds)]
    _, ref_ds, _ = datasets(det_cfg(det_root, *common, "data.det_aug.photometric=false"))
    raw = [torch.from_numpy(ref_ds.load_image(i)).permute(2, 0, 1).float() / 255 for i in square_indices(ref_ds)]
    assert len(raw) >= 2
    assert all(torch.allclose(a, r, atol=1 / 255) for a, r in zip(images[False], raw))
    assert sum(not torch.allclose(a, b, atol=2 / 255) for a, b in zip(images[True], raw)) >= len(raw) // 2


def test_seg_aug_base_size_sets_the_resized_shorter_side(seg_root: Path) -> None:
    for base in (40, 64):
        cfg = seg_cfg(seg_root, f"data.seg_aug.base_size={base}", "data.seg_aug.crop_size=96",
                      "data.seg_aug.scale_range=[1.0, 1.0]")
        _, train_ds, _ = datasets(cfg)
        extents = [content_extent(train_ds[i][1], cfg.model.ignore_index) for i in range(len(train_ds))]
        assert {min(e) for e in extents} == {base}


def test_seg_aug_crop_size_sets_the_training_size(seg_root: Path) -> None:
    for crop in (40, 56):
        _, train_ds, _ = datasets(seg_cfg(seg_root, f"data.seg_aug.crop_size={crop}"))
        image, mask = train_ds[0]
        assert tuple(image.shape) == (3, crop, crop) and tuple(mask.shape) == (crop, crop)


def test_seg_aug_scale_range_scales_the_content(seg_root: Path) -> None:
    for scale, side in ((0.5, 32), (1.0, 64)):
        cfg = seg_cfg(seg_root, "data.seg_aug.base_size=64", "data.seg_aug.crop_size=96",
                      f"data.seg_aug.scale_range=[{scale}, {scale}]")
        _, train_ds, _ = datasets(cfg)
        assert {min(content_extent(train_ds[i][1], cfg.model.ignore_index)) for i in range(len(train_ds))} == {side}


def test_seg_aug_flip_prob_mirrors_images_and_masks(seg_root: Path) -> None:
    common = ("data.seg_aug.base_size=64", "data.seg_aug.crop_size=64", "data.seg_aug.scale_range=[1.0, 1.0]",
              "data.seg_aug.photometric=false")
    _, plain, _ = datasets(seg_cfg(seg_root, *common, "data.seg_aug.flip_prob=0.0"))
    _, flipped, _ = datasets(seg_cfg(seg_root, *common, "data.seg_aug.flip_prob=1.0"))
    squares = square_indices(plain)
    assert len(squares) >= 2
    for i in squares:  # square 64-px images: resize, scale and crop are the identity, only the flip acts
        raw = torch.from_numpy(plain.semantic_mask(plain.ids[i]).astype(np.int64))
        (img0, mask0), (img1, mask1) = plain[i], flipped[i]
        assert torch.equal(mask0, raw) and torch.equal(mask1, raw.flip(-1))
        assert torch.allclose(img1, img0.flip(-1), atol=1e-5)
        assert not torch.equal(raw, raw.flip(-1))


def test_seg_aug_photometric_jitters_colours(seg_root: Path) -> None:
    common = ("data.seg_aug.base_size=64", "data.seg_aug.crop_size=64", "data.seg_aug.scale_range=[1.0, 1.0]",
              "data.seg_aug.flip_prob=0.0")
    samples = {}
    for on in (False, True):
        _, train_ds, _ = datasets(seg_cfg(seg_root, *common, f"data.seg_aug.photometric={on}"))
        seeded = SeededAugmentation(train_ds, seed=0)
        samples[on] = [seeded[i] for i in square_indices(train_ds)]
    assert len(samples[False]) >= 2
    for (_, m0), (_, m1) in zip(samples[False], samples[True]):
        assert torch.equal(m0, m1)  # colours only
    changed = sum(not torch.allclose(a, b, atol=1e-3) for (a, _), (b, _) in zip(samples[False], samples[True]))
    assert changed >= len(samples[False]) // 2


def test_seg_aug_eval_size_resizes_val_images(seg_root: Path) -> None:
    sides = {}
    for size in ("null", "48", "80"):
        _, _, val_ds = datasets(seg_cfg(seg_root, f"data.seg_aug.eval_size={size}"))
        sides[size] = {min(val_ds[i][0].shape[1:]) for i in range(len(val_ds))}
    assert sides == {"null": {64}, "48": {48}, "80": {80}}


# ============================================================================= optimiser


@pytest.fixture(scope="module")
def small_detector(det_root: Path) -> nn.Module:
    return det_model(det_cfg(det_root))


def _optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """What the Trainer builds: the optim section over the detector with the task's trunk prefixes."""
    return build_optimizer(model, cfg.optim, cfg.data.batch_size, DetectionTask.trunk_prefixes)


def test_optim_momentum_and_nesterov_reach_sgd(det_root: Path, small_detector: nn.Module) -> None:
    for momentum, nesterov in ((0.9, False), (0.5, True)):
        opt = _optimizer(det_cfg(det_root, "optim.name=sgd", f"optim.momentum={momentum}",
                                 f"optim.nesterov={nesterov}"), small_detector)
        assert isinstance(opt, torch.optim.SGD)
        assert {(g["momentum"], g["nesterov"]) for g in opt.param_groups} == {(momentum, nesterov)}


def test_optim_lr_and_base_batch_size_set_the_group_lrs(det_root: Path, small_detector: nn.Module) -> None:
    def lrs(*overrides: str) -> set[float]:  # data.batch_size is 2 in the tiny config
        return {round(g["lr"], 12) for g in _optimizer(det_cfg(det_root, *overrides), small_detector).param_groups}

    assert lrs("optim.lr=0.003", "optim.base_batch_size=null") == {0.003}
    assert lrs("optim.lr=0.04", "optim.base_batch_size=null") == {0.04}
    assert lrs("optim.lr=0.04", "optim.base_batch_size=8") == {0.01}  # x 2 / 8
    assert lrs("optim.lr=0.04", "optim.base_batch_size=1") == {0.08}


def test_optim_weight_decay_sets_the_decayed_groups(det_root: Path, small_detector: nn.Module) -> None:
    for decay in (0.05, 0.0003):
        groups = _optimizer(det_cfg(det_root, f"optim.weight_decay={decay}"), small_detector).param_groups
        assert {g["name"]: g["weight_decay"] for g in groups} == {
            "head/decay": decay, "head/no_decay": 0.0, "trunk/decay": decay, "trunk/no_decay": 0.0}


def _lrs(det_root: Path, out: Path, steps: int, *overrides: str) -> list[float]:
    """The lr of the Trainer's optimiser at iterations 0..steps (its scheduler stepped, nothing trained);
    the tiny run has 4 iterations an epoch and lr 0.001 (AdamW, no batch scaling)."""
    trainer = Trainer(det_cfg(det_root, *overrides, epochs=2), out)
    lrs = [trainer.optimizer.param_groups[0]["lr"]]
    for _ in range(steps):
        trainer.optimizer.step()
        trainer.scheduler.step()
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
    return lrs


def test_warmup_iters_and_factor_set_the_first_lrs(det_root: Path, tmp_path: Path) -> None:
    const = ("schedule.name=constant",)
    short = _lrs(det_root, tmp_path / "a", 4, *const, "schedule.warmup_iters=2", "schedule.warmup_factor=0.1")
    assert short == pytest.approx([1e-4, 5.5e-4, 1e-3, 1e-3, 1e-3])
    other = _lrs(det_root, tmp_path / "b", 4, *const, "schedule.warmup_iters=4", "schedule.warmup_factor=0.5")
    assert other == pytest.approx([5e-4, 6.25e-4, 7.5e-4, 8.75e-4, 1e-3])
    assert _lrs(det_root, tmp_path / "c", 1, *const, "schedule.warmup_iters=0") == pytest.approx([1e-3, 1e-3])


def test_step_schedule_milestones_and_gamma(det_root: Path, tmp_path: Path) -> None:
    step = ("schedule.name=step", "schedule.warmup_iters=0")
    # milestones are epochs (4 iterations each here)
    one = _lrs(det_root, tmp_path / "a", 8, *step, "schedule.milestones=[1]", "schedule.gamma=0.5")
    assert one == pytest.approx([1e-3] * 4 + [5e-4] * 5)
    late = _lrs(det_root, tmp_path / "b", 8, *step, "schedule.milestones=[2]", "schedule.gamma=0.5")
    assert late == pytest.approx([1e-3] * 8 + [5e-4])
    steep = _lrs(det_root, tmp_path / "c", 8, *step, "schedule.milestones=[1]", "schedule.gamma=0.1")
    assert steep == pytest.approx([1e-3] * 4 + [1e-4] * 5)


def test_poly_power_shapes_the_decay(det_root: Path, tmp_path: Path) -> None:
    poly = ("schedule.name=poly", "schedule.warmup_iters=0", "schedule.min_lr_ratio=0.0")
    linear = _lrs(det_root, tmp_path / "a", 4, *poly, "schedule.power=1.0")  # over 8 iterations
    squared = _lrs(det_root, tmp_path / "b", 4, *poly, "schedule.power=2.0")
    assert linear == pytest.approx([1e-3 * (1 - i / 8) for i in range(5)])
    assert squared == pytest.approx([1e-3 * (1 - i / 8) ** 2 for i in range(5)])


def test_optim_betas_reach_adamw(det_root: Path, small_detector: nn.Module) -> None:
    for betas in ((0.9, 0.999), (0.8, 0.95)):
        opt = _optimizer(det_cfg(det_root, "optim.name=adamw", f"optim.betas=[{betas[0]}, {betas[1]}]"),
                         small_detector)
        assert isinstance(opt, torch.optim.AdamW)
        assert {tuple(g["betas"]) for g in opt.param_groups} == {betas}


def _grad_norm(model: nn.Module) -> float:
    return float(torch.sqrt(sum(p.grad.double().square().sum() for p in model.parameters() if p.grad is not None)))


PLAIN_SGD = ("optim.name=sgd", "optim.momentum=0.0", "optim.weight_decay=0.0", "optim.lr=1.0",
             "optim.base_batch_size=null", "schedule.name=constant", "schedule.warmup_iters=0")


def _one_step(cfg: TrainConfig, out: Path) -> tuple[Trainer, float, dict[str, float]]:
    """One training step of a fresh Trainer: (trainer, norm of the parameter update, the step's log)."""
    trainer = Trainer(cfg, out)
    batch = next(iter(trainer.train_loader))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    log = trainer._step(batch)
    update = float(torch.sqrt(sum((p.detach().double() - b.double()).square().sum()
                                  for p, b in zip(trainer.model.parameters(), before))))
    return trainer, update, log


def test_clip_grad_norm_bounds_the_update(det_root: Path, tmp_path: Path) -> None:
    free, free_update, free_log = _one_step(det_cfg(det_root, *PLAIN_SGD), tmp_path / "free")
    norm = _grad_norm(free.model)
    assert "grad_norm" not in free_log and free_update == pytest.approx(norm, rel=1e-3)  # lr 1: update = gradient
    clip = norm / 10
    clipped, clipped_update, clipped_log = _one_step(
        det_cfg(det_root, *PLAIN_SGD, f"optim.clip_grad_norm={clip}"), tmp_path / "clipped")
    assert clipped_log["grad_norm"] == pytest.approx(norm, rel=1e-3)  # the same first gradient, logged unclipped
    assert _grad_norm(clipped.model) == pytest.approx(clip, rel=1e-3)
    assert clipped_update == pytest.approx(clip, rel=1e-3)


def test_grad_norm_per_stage_logs_the_stage_norms(det_root: Path, tmp_path: Path) -> None:
    from backbones_tools.engine.trainer import grad_norms_per_stage

    off, _, off_log = _one_step(det_cfg(det_root, "train.grad_norm_per_stage=false"), tmp_path / "off")
    on, _, on_log = _one_step(det_cfg(det_root, "train.grad_norm_per_stage=true"), tmp_path / "on")
    expected = grad_norms_per_stage(on.model, on.task.trunk_prefixes)
    logged = {k: v for k, v in on_log.items() if k.startswith("grad_norm/")}
    assert len(expected) >= 5 and all(v > 0 for v in expected.values())
    assert logged == pytest.approx(expected, rel=1e-5)
    assert not any(k.startswith("grad_norm/") for k in off_log)
    assert on_log["loss"] == pytest.approx(off_log["loss"], rel=1e-5)  # the same step otherwise


# ============================================================================= the training loop


@pytest.fixture(scope="module")
def fit_run(det_root: Path, module_tmp):
    """``run(*overrides)``: a short fit (4 training images, 2 iterations an epoch, 2 epochs) with the
    evaluation and checkpoint writes stubbed out and recorded; cached per overrides."""
    cache: dict[tuple[str, ...], SimpleNamespace] = {}

    def run(*extra: str) -> SimpleNamespace:
        if extra not in cache:
            cfg = det_cfg(det_root, "data.max_train_images=4", "train.checkpoint_every_iters=null",
                          "eval.visualize=0", *extra, epochs=2)
            out = module_tmp("fit")
            trainer = Trainer(cfg, out)
            evaluated: list[tuple[int, int]] = []
            saved: list[tuple[int, tuple[str, ...]]] = []

            def fake_evaluate():
                evaluated.append((trainer.epoch, trainer.global_iter))
                return {cfg.best_metric: float(trainer.global_iter)}, ""

            trainer.evaluate = fake_evaluate
            trainer.save = lambda *names: saved.append((trainer.global_iter, names))
            result = trainer.fit()
            trains = [r for r in read_jsonl(out / "metrics.jsonl") if r["type"] == "train"]
            cache[extra] = SimpleNamespace(trainer=trainer, result=result, evaluated=evaluated, saved=saved,
                                           trains=trains)
        return cache[extra]

    return run


def test_epochs_and_max_iters_set_the_iterations_run(fit_run) -> None:
    two, one, three_iters = fit_run(), fit_run("train.epochs=1"), fit_run("train.max_iters=3")
    assert (two.result.iterations, one.result.iterations, three_iters.result.iterations) == (4, 2, 3)
    assert (two.trainer.total_iters, one.trainer.total_iters, three_iters.trainer.total_iters) == (4, 2, 3)
    assert [r["global_iter"] for r in three_iters.trains] == [1, 2, 3]


def test_log_every_sets_the_logged_iterations(fit_run) -> None:
    assert [r["global_iter"] for r in fit_run().trains] == [1, 2, 3, 4]
    assert [r["global_iter"] for r in fit_run("train.log_every=3").trains] == [1, 3]  # and always the first


def test_eval_every_sets_the_evaluated_epochs(fit_run) -> None:
    assert fit_run().evaluated == [(1, 2), (2, 4)]
    assert fit_run("train.eval_every=2").evaluated == [(2, 4)]


def test_checkpoint_every_iters_saves_mid_epoch(fit_run) -> None:
    def last_saves(run) -> list[int]:
        return [it for it, names in run.saved if "last.pth" in names]

    assert last_saves(fit_run()) == [2, 4]  # epoch ends only
    assert last_saves(fit_run("train.checkpoint_every_iters=1")) == [1, 2, 2, 3, 4, 4]


def test_seed_sets_the_initial_weights(det_trainer: Trainer, det_root: Path, tmp_path: Path) -> None:
    from backbones_tools.engine.trainer import seed_everything

    other = Trainer(det_cfg(det_root, "train.seed=1"), tmp_path / "run")
    a, b = det_trainer.model_without_ddp.state_dict(), other.model_without_ddp.state_dict()
    key = "roi_heads.box_head.fc6.weight"
    assert not torch.equal(a[key], b[key])
    seed_everything(0)
    assert torch.equal(det_trainer.task.build_model(4).state_dict()[key], a[key])  # seed 0 gives exactly these
    seed_everything(1)
    assert torch.equal(det_trainer.task.build_model(4).state_dict()[key], b[key])
    assert det_trainer.train_ds.seed == 0 and other.train_ds.seed == 1  # and the augmentation draws


def test_deterministic_turns_on_deterministic_algorithms(det_root: Path, tmp_path: Path) -> None:
    was = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(False)
        Trainer(det_cfg(det_root, "train.deterministic=false"), tmp_path / "off")
        assert not torch.are_deterministic_algorithms_enabled()
        Trainer(det_cfg(det_root, "train.deterministic=true"), tmp_path / "on")
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(was)


def test_device_places_the_run(det_root: Path, tmp_path: Path) -> None:
    cpu = Trainer(det_cfg(det_root, "train.device=cpu"), tmp_path / "cpu")
    assert cpu.ctx.device.type == "cpu" and next(cpu.model.parameters()).device.type == "cpu"
    if torch.cuda.is_available():
        gpu = Trainer(det_cfg(det_root, "train.device=cuda"), tmp_path / "cuda")
        assert gpu.ctx.device.type == "cuda" and next(gpu.model.parameters()).device.type == "cuda"
    else:
        with pytest.raises(ConfigError, match="train.device is 'cuda' but no CUDA device"):
            Trainer(det_cfg(det_root, "train.device=cuda"), tmp_path / "cuda")


def test_amp_sets_the_autocast_dtype(det_trainer: Trainer, det_root: Path, tmp_path: Path) -> None:
    bf16 = Trainer(det_cfg(det_root, "train.amp=bf16", "train.channels_last=false"), tmp_path / "run")
    x, w = torch.randn(2, 8), torch.randn(4, 8)
    dtypes = {}
    for t in (det_trainer, bf16):
        with trainer_mod._autocast(t.precision.amp, t.ctx.device):
            dtypes[t.precision.amp] = nn.functional.linear(x, w).dtype
    assert dtypes == {"none": torch.float32, "bf16": torch.bfloat16}


def test_sync_bn_converts_the_norms_under_ddp(det_root: Path, tmp_path: Path, monkeypatch) -> None:
    # two processes as far as the Trainer can tell (no process group: DDP itself is stubbed)
    monkeypatch.setattr(trainer_mod, "DistributedDataParallel", lambda module, device_ids=None: module)
    ctx = DistContext(rank=0, world_size=2)
    counts = {}
    for on in (False, True):
        model = Trainer(det_cfg(det_root, f"train.sync_bn={on}"), tmp_path / f"run{on}", ctx=ctx).model_without_ddp
        counts[on] = (sum(isinstance(m, nn.SyncBatchNorm) for m in model.modules()),
                      sum(type(m) is nn.BatchNorm2d for m in model.modules()))
    assert counts[False][0] == 0 and counts[False][1] > 10
    assert counts[True] == (counts[False][1], 0)  # every BatchNorm2d became a SyncBatchNorm


def test_num_threads_sets_the_torch_threads(det_root: Path, tmp_path: Path) -> None:
    was = torch.get_num_threads()
    try:
        for n in (2, 1):
            Trainer(det_cfg(det_root, f"train.num_threads={n}"), tmp_path / f"run{n}")
            assert torch.get_num_threads() == n
    finally:
        torch.set_num_threads(was)


# ============================================================================= evaluation


def _perfect_predictions(task: DetectionTask, loader) -> list[dict[str, torch.Tensor]]:
    out = []
    for _, targets in loader:
        out += [{"boxes": t["boxes"], "labels": t["labels"], "scores": torch.ones(len(t["labels"]))} for t in targets]
    return out


def test_eval_backend_picks_the_coco_implementation(det_root: Path, monkeypatch) -> None:
    import backbones_tools.evaluation.coco_evaluator as CE

    used: list[str] = []
    real = CE.get_backend

    def spy(name: str = "pycocotools"):
        backend = real(name)
        used.append(backend.cocoeval_cls.__module__.split(".")[0])
        return backend

    monkeypatch.setattr(CE, "get_backend", spy)
    results = {}
    for backend in ("pycocotools", "faster_coco_eval"):
        cfg = det_cfg(det_root, f"eval.backend={backend}")
        task, _, val_ds = datasets(cfg)
        loader = build_eval_loader(val_ds, cfg.data, DistContext(), task.collate)
        queue = _perfect_predictions(task, loader)
        monkeypatch.setattr(task, "predict", lambda model, images, device: [queue.pop(0) for _ in images])
        used.clear()
        metrics, _ = task.evaluate(nn.Identity(), loader, DistContext())
        results[backend] = (set(used), metrics["bbox/AP"])
    assert results["pycocotools"][0] == {"pycocotools"} and results["faster_coco_eval"][0] == {"faster_coco_eval"}
    assert results["pycocotools"][1] == pytest.approx(1.0) and results["faster_coco_eval"][1] == pytest.approx(1.0)


def test_best_metric_picks_the_checkpointed_metric(det_root: Path) -> None:
    metrics = {"bbox/AP": 0.1, "bbox/AP50": 0.7}
    best = {}
    for override in ((), ("eval.best_metric=bbox/AP50",)):
        cfg = det_cfg(det_root, *override)
        # what Trainer.__init__ sets and Trainer._update_best reads
        state = SimpleNamespace(best={"metric": cfg.best_metric, "value": None, "epoch": None}, epoch=1)
        assert Trainer._update_best(state, metrics)
        best[cfg.best_metric] = state.best["value"]
    assert best == {"bbox/AP": 0.1, "bbox/AP50": 0.7}


def _drawn(det_root: Path, out: Path, *overrides: str) -> tuple[Path | None, int]:
    """Draw the val images with a fixed prediction; returns the PNG and how many images were drawn."""
    cfg = det_cfg(det_root, *overrides)
    task = DetectionTask(cfg, det_root)
    _, val_ds = task.build_datasets(train=False)
    drawn = [0]

    def predict(model, images, device):
        drawn[0] += len(images)
        return [{"boxes": torch.tensor([[4.0, 4.0, 30.0, 30.0], [34.0, 34.0, 60.0, 60.0]]),
                 "labels": torch.tensor([1, 2]), "scores": torch.tensor([0.9, 0.4])} for _ in images]

    task.predict = predict
    return task.draw(nn.Identity(), val_ds, out, CPU), drawn[0]


def test_visualize_sets_the_number_of_drawn_images(det_root: Path, tmp_path: Path) -> None:
    assert _drawn(det_root, tmp_path / "none.png", "eval.visualize=0") == (None, 0)
    widths = {}
    for n in (1, 3):
        png, count = _drawn(det_root, tmp_path / f"v{n}.png", f"eval.visualize={n}")
        assert count == n
        widths[n] = Image.open(png).size[0]
    assert widths[3] > 2 * widths[1]


def test_score_thresh_sets_what_the_drawing_keeps(det_root: Path, tmp_path: Path) -> None:
    def pixels(thresh: float) -> np.ndarray:
        png, _ = _drawn(det_root, tmp_path / f"t{thresh}.png", "eval.visualize=1", f"eval.score_thresh={thresh}")
        return np.asarray(Image.open(png))

    low, also_low, high = pixels(0.3), pixels(0.35), pixels(0.5)
    assert np.array_equal(low, also_low)  # both keep the 0.4 box
    assert not np.array_equal(low, high)  # 0.5 drops it
    assert np.array_equal(high, pixels(0.8))  # both keep only the 0.9 box
