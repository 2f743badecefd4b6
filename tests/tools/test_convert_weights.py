"""tools/convert_weights.py: foreign and run checkpoints become plain trunk state dicts that load
strictly into create_backbone and compute exactly what the source weights compute."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import pytest
import torch
from backbones_tools import convert_weights as convert_cli
from backbones_tools.deploy.convert import convert_weights, save_state_dict

from backbones import create_backbone, load_weights
from tests.helpers import randomize_norms_
from tests.test_weights import _to_detectron2  # detectron2's names, restated independently of ours

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools


@pytest.fixture(scope="module")
def resnet50() -> torch.nn.Module:
    """The source model: random weights and BN statistics, so equal outputs mean equal weights."""
    torch.manual_seed(0)
    return randomize_norms_(create_backbone("resnet50")).eval()


def _to_mmdet(key: str) -> str:
    """MMDetection's ResNet names: ours under ``backbone.`` (mirrors tests/test_weights.py)."""
    return f"backbone.{key}"


def _load(path: Path, name: str, **options) -> torch.nn.Module:
    """``create_backbone(name)`` with ``path`` loaded by plain ``load_state_dict(strict=True)``."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    model = create_backbone(name, **options)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _assert_same_outputs(model: torch.nn.Module, reference: torch.nn.Module, size: int = 64) -> None:
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        got, want = model(x), reference(x)
    assert list(got) == list(want)
    for tap in want:
        assert torch.equal(got[tap], want[tap]), tap


def _write_detectron2_pkl(path: Path, model: torch.nn.Module) -> Path:
    blobs = {_to_detectron2(k): v.numpy() for k, v in model.state_dict().items() if "num_batches" not in k}
    blobs["fc1000_w"] = torch.zeros(1000, 2048).numpy()
    with open(path, "wb") as f:
        pickle.dump({"model": blobs, "__author__": "torchvision", "matching_heuristics": True}, f)
    return path


def _write_mmdet(path: Path, model: torch.nn.Module) -> Path:
    state = {_to_mmdet(k): v for k, v in model.state_dict().items()}
    state["neck.lateral_convs.0.conv.weight"] = torch.zeros(256, 256, 1, 1)
    state["rpn_head.rpn_cls.weight"] = torch.zeros(3, 256, 1, 1)
    torch.save({"meta": {"epoch": 12}, "state_dict": state}, path)
    return path


@pytest.mark.parametrize("kind", ["detectron2", "mmdet"])
@pytest.mark.parametrize("arch", [None, "resnet50"])
def test_foreign_checkpoint_converts_to_the_same_model(tmp_path, capsys, resnet50, kind, arch):
    src = (_write_detectron2_pkl(tmp_path / "R-50.pkl", resnet50) if kind == "detectron2"
           else _write_mmdet(tmp_path / "mmdet.pth", resnet50))
    dst = tmp_path / "r50.pth"
    assert convert_cli.main([str(src), str(dst), *(["--arch", arch] if arch else [])]) == 0
    printed = capsys.readouterr().out
    assert f"{kind} naming" in printed and f"wrote {dst}" in printed
    if arch:
        assert "loads strictly into create_backbone('resnet50')" in printed and "missing" not in printed
    else:
        assert "matches create_backbone('resnet50')" in printed and "[3, 4, 6, 3] Bottleneck" in printed
    model = _load(dst, "resnet50")
    _assert_same_outputs(model, resnet50)
    ignored = "fc1000_w" if kind == "detectron2" else "neck.lateral_convs.0.conv.weight"
    assert ignored in printed  # the parts that are not trunk are listed as dropped/ignored


def test_mmdet_deep_stem_checkpoint(tmp_path):
    """MMDetection's ResNetV1d stem (``stem.0`` .. ``stem.7``) becomes timm's ``conv1.0`` .. ``bn1``."""
    torch.manual_seed(1)
    reference = randomize_norms_(create_backbone("resnet50d")).eval()
    mm_stem = {"conv1.0": "stem.0", "conv1.1": "stem.1", "conv1.3": "stem.3", "conv1.4": "stem.4",
               "conv1.6": "stem.6", "bn1": "stem.7"}
    state = {}
    for key, value in reference.state_dict().items():
        module, _, leaf = key.rpartition(".")
        state[f"backbone.{mm_stem.get(module, module)}.{leaf}"] = value
    torch.save({"state_dict": state}, tmp_path / "mm_r50d.pth")
    conversion = convert_weights(tmp_path / "mm_r50d.pth")
    assert conversion.format == "mmdet" and conversion.matches == ["resnet50d"]
    save_state_dict(conversion.state, tmp_path / "r50d.pth")
    _assert_same_outputs(_load(tmp_path / "r50d.pth", "resnet50d"), reference)


@pytest.fixture(scope="module")
def det_run(module_tmp) -> Path:
    """A tiny Faster R-CNN R18 run (as tests/test_train_det.py trains it), one epoch."""
    from backbones_tools.config import load_config
    from backbones_tools.data import make_shapes_dataset
    from backbones_tools.engine import train

    from tests.test_train_det import DEMO, SHAPES, tiny_overrides

    root = module_tmp("shapes_det_convert")
    make_shapes_dataset(root, **SHAPES)
    train(load_config(DEMO, tiny_overrides(root, epochs=1)), root / "run")
    return root / "run" / "best.pth"


@pytest.mark.parametrize("arch", [None, "resnet18"])
def test_detector_run_checkpoint(tmp_path, capsys, det_run, arch):
    from backbones_tools.config.loader import validate_config
    from backbones_tools.data import CategoryMap
    from backbones_tools.engine.tasks import build_detection_model

    dst = tmp_path / "trunk.pth"
    assert convert_cli.main([str(det_run), str(dst), *(["--arch", arch] if arch else [])]) == 0
    printed = capsys.readouterr().out
    assert "torchvision_detector naming, run checkpoint of a detection model" in printed
    state = torch.load(det_run, weights_only=True)
    cfg = validate_config(state["config"])
    detector = build_detection_model(cfg, CategoryMap.from_dict(state["category_map"]).num_classes)
    detector.load_state_dict(state["model"])
    trunk = detector.backbone.body.eval()
    converted = torch.load(dst, weights_only=True)
    assert converted.keys() == trunk.state_dict().keys()
    for key, value in trunk.state_dict().items():
        assert torch.equal(converted[key], value), key
    model = _load(dst, cfg.model.backbone.name, out_features=tuple(trunk.out_features))
    _assert_same_outputs(model, trunk)


def test_segmenter_run_checkpoint(tmp_path, capsys):
    """A segmenter run holds the trunk under ``backbone.`` next to ``classifier.``."""
    torch.manual_seed(2)
    trunk = randomize_norms_(create_backbone("resnet18")).eval()
    model_state = {f"backbone.{k}": v for k, v in trunk.state_dict().items()}
    model_state["classifier.predict.weight"] = torch.zeros(5, 16, 1, 1)
    torch.save({"model": model_state, "config": {"task": "seg"}, "task": "seg"}, tmp_path / "best.pth")
    assert convert_cli.main([str(tmp_path / "best.pth"), str(tmp_path / "r18.pth"), "--arch", "resnet18"]) == 0
    assert "run checkpoint of a segmentation model" in capsys.readouterr().out
    _assert_same_outputs(_load(tmp_path / "r18.pth", "resnet18"), trunk)


def test_mismatching_arch_exits_1_with_the_report(tmp_path, capsys, resnet50):
    src = _write_mmdet(tmp_path / "mmdet.pth", resnet50)
    dst = tmp_path / "out.pth"
    assert convert_cli.main([str(src), str(dst), "--arch", "resnet101"]) == 1
    captured = capsys.readouterr()
    assert "missing (" in captured.out and "layer3.6.conv1.weight" in captured.out  # the load report
    assert "does not fit create_backbone('resnet101')" in captured.err and "keys missing" in captured.err
    assert not dst.exists()
    assert convert_cli.main([str(src), str(dst), "--arch", "resnext50_32x4d"]) == 1
    assert "of the wrong shape" in capsys.readouterr().err


def test_safetensors_round_trip(tmp_path, capsys, resnet50):
    safetensors = pytest.importorskip("safetensors.torch")
    src = _write_detectron2_pkl(tmp_path / "R-50.pkl", resnet50)
    dst = tmp_path / "r50.safetensors"
    assert convert_cli.main([str(src), str(dst), "--arch", "resnet50"]) == 0
    capsys.readouterr()
    loaded = safetensors.load_file(str(dst))
    expected = resnet50.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], v) for k, v in expected.items())
    from safetensors import safe_open

    with safe_open(str(dst), "pt") as f:
        assert f.metadata()["source_format"] == "detectron2" and f.metadata()["arch"] == "resnet50"
    fresh = create_backbone("resnet50")
    assert load_weights(fresh, dst).ok  # the package reads it back too
    _assert_same_outputs(fresh.eval(), resnet50)
    # and a .safetensors file converts to a .pth (any format load_weights reads is a source)
    assert convert_cli.main([str(dst), str(tmp_path / "r50.pth")]) == 0
    _assert_same_outputs(_load(tmp_path / "r50.pth", "resnet50"), resnet50)


def test_safetensors_not_installed(monkeypatch, tmp_path, capsys, resnet50):
    src = _write_mmdet(tmp_path / "mmdet.pth", resnet50)
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    assert convert_cli.main([str(src), str(tmp_path / "out.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "needs the safetensors package" in err and "pip install safetensors" in err and "Traceback" not in err
    assert not (tmp_path / "out.safetensors").exists()


def test_user_errors(tmp_path, capsys, resnet50):
    assert convert_cli.main([str(tmp_path / "nope.pth"), str(tmp_path / "out.pth")]) == 2
    assert "error: checkpoint file not found" in capsys.readouterr().err
    src = _write_mmdet(tmp_path / "mmdet.pth", resnet50)
    assert convert_cli.main([str(src), str(tmp_path / "out.npz")]) == 2
    assert "must end in .pth, .pt, .bin or .safetensors" in capsys.readouterr().err
    assert convert_cli.main([str(src), str(tmp_path / "out.pth"), "--arch", "resnet5O"]) == 2
    assert "error: unknown backbone 'resnet5O'" in capsys.readouterr().err
    assert convert_cli.main([str(src), str(tmp_path / "out.pth"), "--option", "norm=FrozenBN"]) == 2
    assert "apply with --arch only" in capsys.readouterr().err
    assert convert_cli.main([str(src), str(tmp_path / "out.pth"), "--arch", "resnet50", "--option", "nrom=GN"]) == 2
    assert "unknown option(s) nrom" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        convert_cli.main(["--help"])
    assert exc.value.code == 0 and "python tools/convert_weights.py" in capsys.readouterr().out
