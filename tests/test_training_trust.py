"""The training recipe equals its config, checked on values: the optimised segmentation total
with ``model.aux_weight``, a category subset trained and scored end to end, ``model.ignore_index``
carried through masks, padding and loss, trunk initialisation from this package's checkpoints with
a report, ``train.amp: auto`` recorded, and the schema refusing fields of the other task."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from backbones_tools.config import ConfigError, load_config
from backbones_tools.data import make_shapes_dataset
from backbones_tools.engine import Trainer, evaluate_checkpoint, load_checkpoint, train
from backbones_tools.engine import precision as P
from backbones_tools.engine.cli import main as cli_main
from backbones_tools.engine.metrics import read_jsonl

from heads import segmentation_loss
from tests.test_train_det import DEMO as DET_DEMO
from tests.test_train_det import SHAPES
from tests.test_train_det import tiny_overrides as det_overrides
from tests.test_train_seg import DEMO as SEG_DEMO
from tests.test_train_seg import tiny_overrides as seg_overrides


@pytest.fixture(scope="module")
def shapes_root(module_tmp) -> Path:
    root = module_tmp("shapes_trust")
    make_shapes_dataset(root, **SHAPES)
    return root


@pytest.fixture(scope="module")
def det_run(shapes_root: Path, module_tmp) -> Path:
    """A finished tiny detection run (its best.pth initialises trunks below)."""
    out = module_tmp("det_run")
    train(load_config(DET_DEMO, det_overrides(shapes_root, epochs=1)), out)
    return out


def _records(run: Path, kind: str) -> list[dict]:
    return [r for r in read_jsonl(run / "metrics.jsonl") if r["type"] == kind]


# ----------------------------------------------------------------------------- segmentation loss


def test_aux_weight_is_the_weight_optimised_and_logged(shapes_root: Path, tmp_path: Path) -> None:
    cfg = load_config(SEG_DEMO, seg_overrides(shapes_root, epochs=1) + [
        "model.aux=true", "model.aux_weight=0.1", "train.max_iters=2"])
    trainer = Trainer(cfg, tmp_path / "run")
    images, masks = next(iter(trainer.train_loader))
    trainer.model.eval()  # no dropout: two forwards give the same logits
    with torch.no_grad():
        total, terms = trainer.task.loss_terms(trainer.model, (images, masks), torch.device("cpu"))
        expected = segmentation_loss(trainer.model(images), masks, aux_weight=0.1, class_balance=0.5)
    assert float(total) == pytest.approx(float(terms["loss_out"] + 0.1 * terms["loss_aux"]), rel=1e-6)
    assert "loss" not in terms and float(total) == pytest.approx(float(expected["loss"]), rel=1e-6)
    trainer.fit()
    for r in _records(tmp_path / "run", "train"):
        assert r["loss"] == pytest.approx(r["loss_out"] + 0.1 * r["loss_aux"], rel=1e-6)
        assert r["loss"] != pytest.approx(r["loss_out"] + r["loss_aux"], rel=1e-3)


def test_ignore_index_is_carried_through_masks_padding_and_loss(shapes_root: Path, tmp_path: Path) -> None:
    seen = {}
    for ignore in (255, 200):
        cfg = load_config(SEG_DEMO, seg_overrides(shapes_root, epochs=1) + [
            f"model.ignore_index={ignore}", "data.seg_aug.base_size=40", "data.seg_aug.crop_size=56"])
        trainer = Trainer(cfg, tmp_path / f"run{ignore}")
        labels = torch.cat([trainer.train_ds[i][1].flatten() for i in range(len(trainer.train_ds))])
        val = torch.cat([trainer.val_ds[i][1].flatten() for i in range(len(trainer.val_ds))])
        seen[ignore] = set(labels.unique().tolist()) | set(val.unique().tolist())
        assert ignore in set(labels.tolist())  # crop padding (base 40 < crop 56) and overlaps
        _, masks = trainer.task.collate([(torch.zeros(3, 4, 4), torch.zeros(4, 4, dtype=torch.long)),
                                         (torch.zeros(3, 6, 6), torch.zeros(6, 6, dtype=torch.long))])
        assert int(masks[0, 5, 5]) == ignore  # batch padding
    assert 200 not in seen[255] and 255 not in seen[200]
    assert seen[200] - {200} == seen[255] - {255}  # the same class labels, another ignore value


def test_ignore_index_must_fit_the_masks(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model.ignore_index"):
        load_config(SEG_DEMO, ["model.ignore_index=300"])


# ----------------------------------------------------------------------------- category subsets


def test_detection_on_a_category_subset_trains_and_scores_only_the_subset(shapes_root: Path,
                                                                         tmp_path: Path) -> None:
    cfg = load_config(DET_DEMO, det_overrides(shapes_root, epochs=1) + ['data.categories=["triangle", 4]'])
    result = train(cfg, tmp_path / "run")
    evals = _records(tmp_path / "run", "eval")
    per_class = sorted(k for k in evals[-1] if k.startswith("bbox/AP-"))
    assert per_class == ["bbox/AP-star", "bbox/AP-triangle"]
    state = load_checkpoint(tmp_path / "run" / "last.pth")
    assert state["category_map"]["category_ids"] == [2, 4]
    # the checkpoint evaluation (eval_coco.py --checkpoint, python -m backbones_tools.engine.evaluate) agrees
    outcome = evaluate_checkpoint(tmp_path / "run" / "last.pth")
    assert outcome.metrics["bbox/AP"] == pytest.approx(result.metrics["bbox/AP"], abs=1e-12)
    assert sorted(k for k in outcome.metrics if k.startswith("bbox/AP-")) == per_class


def test_subset_scoring_leaves_out_the_other_categories_ground_truth() -> None:
    from backbones_tools.engine.tasks import restrict_gt

    gt = {"images": [{"id": 1}, {"id": 2}, {"id": 3}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1},
                          {"id": 2, "image_id": 1, "category_id": 2},
                          {"id": 3, "image_id": 3, "category_id": 2}],
          "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    got = restrict_gt(gt, [1, 2], [2])
    assert [i["id"] for i in got["images"]] == [1, 2]  # an image without subset objects still counts
    assert [a["id"] for a in got["annotations"]] == [2]
    assert got["categories"] == [{"id": 2, "name": "b"}]


# ----------------------------------------------------------------------------- trunk initialisation


def _trunk_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def test_segmenter_fine_tunes_the_detection_runs_trunk(shapes_root: Path, det_run: Path,
                                                        tmp_path: Path) -> None:
    best = det_run / "best.pth"
    cfg = load_config(SEG_DEMO, seg_overrides(shapes_root, epochs=1) + [
        f"model.backbone.weights={best}", "train.max_iters=1"])
    trainer = Trainer(cfg, tmp_path / "seg")
    det_trunk = {k[len("backbone.body."):]: v for k, v in load_checkpoint(best)["model"].items()
                 if k.startswith("backbone.body.")}
    seg_trunk = _trunk_state(trainer.model_without_ddp.backbone)
    assert seg_trunk.keys() == {k for k in det_trunk if not k.endswith("num_batches_tracked")}
    for key, value in seg_trunk.items():
        assert torch.equal(value, det_trunk[key]), key
    trainer.fit()
    start = _records(tmp_path / "seg", "start")[0]
    assert start["backbone_weights"]["loaded"] == len(trainer.model_without_ddp.backbone.state_dict())
    assert start["backbone_weights"]["format"] == "torchvision_detector"

    # and back: the segmenter's run checkpoint initialises a detector's trunk
    det_cfg = load_config(DET_DEMO, det_overrides(shapes_root, epochs=1) + [
        f"model.backbone.weights={tmp_path / 'seg' / 'last.pth'}"])
    det = Trainer(det_cfg, tmp_path / "det2").model_without_ddp.backbone.body
    seg_state = load_checkpoint(tmp_path / "seg" / "last.pth")["model"]
    for key, value in _trunk_state(det).items():
        assert torch.equal(value, seg_state[f"backbone.{key}"]), key


def test_a_plain_trunk_file_initialises_the_trunk(shapes_root: Path, det_run: Path, tmp_path: Path) -> None:
    from backbones import create_backbone

    trunk = create_backbone("resnet18")
    torch.save(trunk.state_dict(), tmp_path / "resnet18.pth")
    cfg = load_config(DET_DEMO, det_overrides(shapes_root, epochs=1) + [
        f"model.backbone.weights={tmp_path / 'resnet18.pth'}"])
    body = Trainer(cfg, tmp_path / "run").model_without_ddp.backbone.body
    for key, value in _trunk_state(body).items():
        assert torch.equal(value, trunk.state_dict()[key]), key


def test_checkpoint_without_a_trunk_is_a_clear_cli_error(shapes_root: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "head_only.pth"
    torch.save({"model": {"classifier.weight": torch.zeros(2, 2)}}, bad)
    args = ["--config", str(DET_DEMO), "--output-dir", str(tmp_path / "run"),
            *(f"--set={o}" for o in det_overrides(shapes_root, epochs=1)),
            f"--set=model.backbone.weights={bad}"]
    assert cli_main("det", args) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "holds no weights for the resnet18 trunk" in err
    assert "Traceback" not in err


def test_seg_demo_without_the_detection_run_says_what_to_run_first(tmp_path: Path, monkeypatch,
                                                                   capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli_main("seg", ["--output-dir", str(tmp_path / "seg")]) == 2
    err = capsys.readouterr().err
    assert "runs/det/demo_shapes_faster_rcnn_r18/best.pth not found" in err
    assert "python tools/train_det.py" in err and "model.backbone.weights=null" in err
    assert "Traceback" not in err and not (tmp_path / "seg").exists() and not (tmp_path / "data").exists()


# ----------------------------------------------------------------------------- precision, schema


@pytest.mark.parametrize("native", [False, True])
def test_amp_auto_is_recorded_on_the_start_line(shapes_root: Path, tmp_path: Path, monkeypatch,
                                                native: bool) -> None:
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: native)
    cfg = load_config(DET_DEMO, det_overrides(shapes_root, epochs=1) + [
        "train.amp=auto", "train.channels_last=auto", "train.max_iters=1"])
    trainer = Trainer(cfg, tmp_path / "run")
    conv = trainer.model_without_ddp.backbone.body.conv1
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) == native
    trainer.fit()
    start = _records(tmp_path / "run", "start")[0]
    assert (start["amp"], start["channels_last"]) == (("bf16", True) if native else ("none", False))
    assert isinstance(start["cpu_flags"], list) and start["device_name"]


@pytest.mark.parametrize("config, override, key", [
    (DET_DEMO, "model.aux=true", "model.aux"), (DET_DEMO, "model.aux_weight=0.1", "model.aux_weight"),
    (DET_DEMO, "model.ignore_index=200", "model.ignore_index"),
    (DET_DEMO, "data.seg_aug.crop_size=64", "data.seg_aug"), (SEG_DEMO, "model.fpn.out_channels=64", "model.fpn"),
    (SEG_DEMO, "model.box_head_dim=64", "model.box_head_dim"), (SEG_DEMO, "data.det_aug.max_size=64", "data.det_aug"),
])
def test_a_field_of_the_other_task_is_an_unknown_key(config: Path, override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=f"unknown key '{key}' \\(set in --set\\)"):
        load_config(config, [override])


def test_a_kind_of_the_other_task_names_where_it_was_set() -> None:
    with pytest.raises(ConfigError, match=r"model.kind 'deeplabv3' is not a det model.*\(set in --set\)"):
        load_config(DET_DEMO, ["model.kind=deeplabv3"])


def test_shipped_configs_default_to_machine_chosen_precision() -> None:
    for config in (DET_DEMO, SEG_DEMO):
        cfg = load_config(config)
        assert (cfg.train.amp, cfg.train.channels_last) == ("auto", "auto")
