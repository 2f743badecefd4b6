"""tools/export.py: trunks, FPN backbones and trained models exported to ONNX compute in ONNX
Runtime what they compute in PyTorch (within backbones_tools.deploy.onnx_export.RTOL of each output's scale),
at several input sizes and batch sizes (dynamic axes); and the CLI's errors."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from backbones_tools import export as export_cli
from backbones_tools.deploy import onnx_export as ox

needs_onnx = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime")),
    reason='needs onnx and onnxruntime: pip install -e ".[export]"',
)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools

#: (batch, height, width) of the ONNX Runtime checks: two batch sizes, two (non-square) sizes.
SIZES = ((1, 64, 64), (3, 96, 128))


def _assert_matches(target: ox.ExportTarget, path: Path, sizes=SIZES) -> list[ox.OutputCheck]:
    """ONNX Runtime equals PyTorch within the tolerance, output by output, at every size."""
    session = ox.onnx_session(path)
    assert [o.name for o in session.get_outputs()] == list(target.output_names)
    checks = []
    for batch, h, w in sizes:
        x = target.random_input(batch, (h, w), seed=h * w + batch)
        for check in ox.check_onnx(target, path, x, session=session):
            assert check.ok, f"{batch}x3x{h}x{w}: {check}"
            assert check.scale > 0, f"{check.name} is all zero: the comparison would be vacuous"
            checks.append(check)
    return checks


def _onnx_input_dims(path: Path) -> list:
    import onnx

    (inp,) = onnx.load(str(path), load_external_data=False).graph.input
    return [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]


# ---------------------------------------------------------------------------------- trunks, FPN


@needs_onnx
def test_resnet50_trunk(tmp_path, capsys):
    out = tmp_path / "resnet50.onnx"
    assert export_cli.main(["--backbone", "resnet50", "--out", str(out), "--input-size", "64", "64"]) == 0
    printed = capsys.readouterr().out
    assert "outputs stem, c2, c3, c4, c5" in printed and "c5: max |diff|" in printed
    assert "ok: every output matches" in printed
    assert _onnx_input_dims(out) == ["batch", 3, "height", "width"]
    torch.manual_seed(0)  # the CLI builds its random weights under seed 0: the same model
    target = ox.trunk_target("resnet50")
    checks = _assert_matches(target, out)
    assert {c.name for c in checks} == {"stem", "c2", "c3", "c4", "c5"}


@needs_onnx
def test_res2net_fpn_backbone(tmp_path, capsys):
    out = tmp_path / "r2n50_fpn.onnx"
    assert export_cli.main(["--backbone", "res2net50_26w_4s", "--fpn", "--out", str(out),
                            "--input-size", "64", "64"]) == 0
    assert "outputs p2, p3, p4, p5, p6" in capsys.readouterr().out
    torch.manual_seed(0)
    target = ox.trunk_target("res2net50_26w_4s", fpn=True)
    assert target.output_names == ("p2", "p3", "p4", "p5", "p6")
    _assert_matches(target, out)


@needs_onnx
def test_trunk_weights_file_and_taps(tmp_path, capsys):
    """--weights loads a checkpoint (here detectron2-named); --out-features picks the taps."""
    from backbones import create_backbone
    from tests.helpers import randomize_norms_
    from tests.test_weights import _to_detectron2

    reference = randomize_norms_(create_backbone("resnet18")).eval()
    weights = tmp_path / "R-18.pth"
    torch.save({"model": {_to_detectron2(k): v for k, v in reference.state_dict().items()}}, weights)
    out = tmp_path / "r18.onnx"
    code = export_cli.main(["--backbone", "resnet18", "--weights", str(weights), "--out-features", "c3", "c5",
                            "--out", str(out), "--input-size", "64", "64"])
    assert code == 0, capsys.readouterr()
    assert "weights " + str(weights) in capsys.readouterr().out
    session = ox.onnx_session(out)
    assert [o.name for o in session.get_outputs()] == ["c3", "c5"]
    for batch, h, w in SIZES:
        x = torch.randn(batch, 3, h, w)
        with torch.no_grad():
            expected = reference(x)
        got = session.run(None, {"input": x.numpy()})
        for name, value in zip(("c3", "c5"), got):
            scale = expected[name].abs().max().item()
            assert (torch.from_numpy(value) - expected[name]).abs().max().item() <= ox.RTOL * scale + ox.ATOL


@needs_onnx
def test_dynamo_exporter(tmp_path):
    pytest.importorskip("onnxscript")
    target = ox.trunk_target("resnet18", size=(64, 64))
    path = ox.export_onnx(target, tmp_path / "r18.onnx", exporter="dynamo")
    _assert_matches(target, path)


# ------------------------------------------------------------------------- trained checkpoints


def _tiny_checkpoint(module_tmp, demo: str, name: str) -> Path:
    """The best.pth of a one-epoch run of ``tests.<demo>``'s tiny config on 64-px shapes."""
    import importlib

    from backbones_tools.config import load_config
    from backbones_tools.data import make_shapes_dataset
    from backbones_tools.engine import train

    tiny = importlib.import_module(f"tests.{demo}")
    root = module_tmp(name)
    make_shapes_dataset(root, **tiny.SHAPES)
    train(load_config(tiny.DEMO, tiny.tiny_overrides(root, epochs=1)), root / "run")
    return root / "run" / "best.pth"


@pytest.fixture(scope="module")
def seg_checkpoint(module_tmp) -> Path:
    """A tiny DeepLabV3+ R18 trained one epoch on 64-px shapes (as tests/test_train_seg.py does)."""
    return _tiny_checkpoint(module_tmp, "test_train_seg", "shapes_seg_onnx")


@pytest.fixture(scope="module")
def det_checkpoint(module_tmp) -> Path:
    """A tiny Faster R-CNN R18 (16-channel FPN, min_size 64) trained one epoch on 64-px shapes."""
    return _tiny_checkpoint(module_tmp, "test_train_det", "shapes_det_onnx")


@needs_onnx
def test_segmentation_checkpoint(seg_checkpoint, tmp_path, capsys):
    image = next((seg_checkpoint.parents[1] / "val2017").glob("*.jpg"))
    out = tmp_path / "seg.onnx"
    assert export_cli.main(["--checkpoint", str(seg_checkpoint), "--out", str(out), "--input-size", "64", "64",
                            "--image", str(image)]) == 0
    printed = capsys.readouterr().out
    assert "outputs out" in printed and f"image {image}" in printed and "out: max |diff|" in printed
    target = ox.checkpoint_target(seg_checkpoint)
    assert target.kind == "segmenter" and target.output_names == ("out",)
    checks = _assert_matches(target, out)
    assert all(c.scale > 0 for c in checks)
    # the logits have the input's size and one channel per class + background
    got = ox.onnx_session(out).run(None, {"input": target.random_input(3, (96, 128)).numpy()})[0]
    assert got.shape == (3, 5, 96, 128)


@needs_onnx
def test_segmentation_checkpoint_trunk_part(seg_checkpoint, tmp_path):
    target = ox.checkpoint_target(seg_checkpoint, part="backbone")
    assert target.kind == "trunk" and target.output_names == ("c2", "c4", "c5")  # DeepLabV3+ with aux
    path = ox.export_onnx(target, tmp_path / "trunk.onnx")
    _assert_matches(target, path)


@needs_onnx
def test_detector_backbone_part(det_checkpoint, tmp_path, capsys):
    out = tmp_path / "fpn.onnx"
    assert export_cli.main(["--checkpoint", str(det_checkpoint), "--part", "backbone", "--out", str(out)]) == 0
    assert "outputs p2, p3, p4, p5, p6" in capsys.readouterr().out
    target = ox.checkpoint_target(det_checkpoint, part="backbone")
    _assert_matches(target, out)


@needs_onnx
def test_whole_faster_rcnn(det_checkpoint, tmp_path, capsys):
    """The whole torchvision Faster R-CNN exports with the TorchScript exporter: one image of any
    size, the same detections as PyTorch, including sizes where the resize scale times the side is
    an integer (200x120 with min_size 64 / max_size 80: scale 0.4), which torchvision's own traced
    resize gets one pixel wrong (see ExactResizeTransform)."""
    out = tmp_path / "det.onnx"
    assert export_cli.main(["--checkpoint", str(det_checkpoint), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "outputs boxes, labels, scores" in printed and "ok: every output matches" in printed
    assert _onnx_input_dims(out) == [3, "height", "width"]
    target = ox.checkpoint_target(det_checkpoint)
    session = ox.onnx_session(out)
    detections = 0
    for h, w in ((64, 64), (200, 120), (120, 200), (97, 131), (300, 301), (40, 40)):
        x = target.random_input(1, (h, w), seed=h + w)
        for check in ox.check_onnx(target, out, x, session=session):
            assert check.ok, f"{h}x{w}: {check}"
        detections += len(target.torch_outputs(x)[0])
    assert detections > 0, "no detections at all: the comparison would be vacuous"


# ----------------------------------------------------------------------------------------- errors


@needs_onnx
def test_unknown_backbone(tmp_path, capsys):
    assert export_cli.main(["--backbone", "resnet5O", "--out", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown backbone 'resnet5O'") and "resnet50" in err
    assert "Traceback" not in err


@needs_onnx
@pytest.mark.parametrize("flag", ["--weights", "--image"])
def test_missing_file(tmp_path, capsys, flag):
    args = ["--backbone", "resnet18", "--out", str(tmp_path / "x.onnx"), flag, str(tmp_path / "nope")]
    assert export_cli.main(args) == 2
    assert "error: " in capsys.readouterr().err and not (tmp_path / "x.onnx").exists()


@needs_onnx
def test_missing_and_bad_checkpoints(tmp_path, capsys):
    out = str(tmp_path / "x.onnx")
    assert export_cli.main(["--checkpoint", str(tmp_path / "nope.pth"), "--out", out]) == 2
    assert "error: checkpoint not found" in capsys.readouterr().err
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    assert export_cli.main(["--checkpoint", str(tmp_path / "junk.pth"), "--out", out]) == 2
    assert "error: cannot read checkpoint" in capsys.readouterr().err
    torch.save({"model": {"conv1.weight": torch.zeros(1)}}, tmp_path / "weights_only.pth")
    assert export_cli.main(["--checkpoint", str(tmp_path / "weights_only.pth"), "--out", out]) == 2
    err = capsys.readouterr().err
    assert "error: " in err and "holds no config" in err and "--weights" in err


@needs_onnx
def test_checkpoint_whose_weights_do_not_fit(seg_checkpoint, tmp_path, capsys):
    state = torch.load(seg_checkpoint, weights_only=True)
    state["model"] = {k: v for k, v in state["model"].items() if not k.startswith("classifier.")}
    torch.save(state, tmp_path / "cut.pth")
    assert export_cli.main(["--checkpoint", str(tmp_path / "cut.pth"), "--out", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert "do not fit the model" in err and "Missing key" in err and "Traceback" not in err


def test_onnxruntime_not_installed(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    assert export_cli.main(["--backbone", "resnet18", "--out", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ('error: ONNX export needs the package onnxruntime, which is not installed: '
                           'pip install -e ".[export]"')
    assert not (tmp_path / "x.onnx").exists()


@needs_onnx
def test_onnxscript_not_installed(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    assert export_cli.main(["--backbone", "resnet18", "--exporter", "dynamo", "--out", str(tmp_path / "x.onnx")]) == 2
    assert "error: ONNX export needs the package onnxscript" in capsys.readouterr().err


def test_onnx_not_installed(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert export_cli.main(["--backbone", "resnet18", "--out", str(tmp_path / "x.onnx")]) == 2
    assert "packages onnx, onnxruntime, which are not installed" in capsys.readouterr().err


def test_usage_errors_and_help(capsys):
    with pytest.raises(SystemExit) as exc:
        export_cli.main(["--checkpoint", "x.pth", "--fpn", "--out", "x.onnx"])
    assert exc.value.code == 2 and "--fpn applies to --backbone" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        export_cli.main(["--help"])
    assert exc.value.code == 0
    assert "python tools/export.py --backbone resnet50 --out resnet50.onnx" in capsys.readouterr().out


def test_a_wrong_export_is_caught():
    """The check is not vacuous: an output that differs by 1e-3 of its scale fails it."""
    import numpy as np

    ref = np.random.default_rng(0).standard_normal((1, 8, 4, 4)).astype(np.float32)
    (ok,) = ox.compare_outputs(["c5"], [ref + 1e-7 * np.abs(ref).max()], [ref])
    (bad,) = ox.compare_outputs(["c5"], [ref + 1e-3 * np.abs(ref).max()], [ref])
    assert ok.ok and not bad.ok and "FAILED" in str(bad)
    (count,) = ox.compare_outputs(["boxes"], [np.zeros((3, 4))], [np.zeros((4, 4))])
    assert not count.ok and "3 detections in ONNX Runtime vs 4 in PyTorch" in str(count)
