"""Benchmark peers: ONNX Runtime / OpenVINO rows (run, checked against ours, skipped when not installed,
a failing export or a mismatch reported), training-step rows against torchvision, the output checks."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from backbones_tools.bench import runtimes
from backbones_tools.bench.check import FP32_RTOL, compare_detections, compare_tensors
from backbones_tools.bench.config import BenchConfig
from backbones_tools.bench.report import markdown_table
from backbones_tools.bench.runner import run_benchmark
from backbones_tools.engine.precision import cpu_has_native_bf16


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """The rows set torch's thread count in this process (threads: 1); restore it afterwards."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


INSTALLED = {name: importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime", "openvino")}
TRUNK = {"model": "resnet18", "options": {"out_features": ["c5"]}}


def _config(peers: list, **overrides) -> dict:
    """One resnet18 row at 64 px, batch 1, one thread, one repeat, in this process."""
    base = {"models": [{**TRUNK, "peers": peers}], "input_sizes": [64], "batch_sizes": [1], "warmup": 0,
            "repeats": 1, "threads": 1, "isolate": False}
    base.update(overrides)
    return base


def _run(tmp_path: Path, config: dict) -> tuple[int, list[dict], str]:
    """``tools/benchmark.py`` on ``config``: exit code, records, results.md."""
    from backbones_tools.benchmark import main

    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    code = main(["--config", str(path), "--output-dir", str(out), "--no-progress"])
    records = json.loads((out / "results.json").read_text())["results"]
    return code, records, (out / "results.md").read_text()


def _peers(record: dict) -> dict[str, dict]:
    return {p["source"]: p for p in record["peers"]}


# ------------------------------------------------------------------------------------------ runtime rows
@pytest.mark.skipif(not (INSTALLED["onnx"] and (INSTALLED["onnxruntime"] or INSTALLED["openvino"])),
                    reason="needs onnx and onnxruntime or openvino: pip install '.[bench]'")
def test_runtime_peers_run_and_match_ours(tmp_path: Path):
    """Our resnet18 exported once, run in each installed runtime in turns with ours and torchvision
    (same weights): every output within the exporter's tolerance, ratios from the measured figures."""
    peers = [{"source": "torchvision", "name": "resnet18", "share_weights": True}, "onnxruntime", "openvino"]
    code, (record,), table = _run(tmp_path, _config(peers))
    assert code == 0 and record["status"] == "ok", record["error"]
    by_source = _peers(record)
    assert list(by_source) == ["torchvision", "onnxruntime", "openvino"]
    ran = [s for s in ("onnxruntime", "openvino") if INSTALLED[s]]
    for source, peer in by_source.items():
        if source not in ran and source != "torchvision":
            assert peer["status"] == "skipped" and f"{source} not installed" in peer["reason"]
            continue
        assert peer["status"] == "ok", peer
        # same weights and input: the peer's c5 equals ours up to float rounding (random weights give
        # maps of scale ~1-10; an export bug gives differences of 1e-2 of the scale or more)
        assert peer["diff_ok"] is True and math.isfinite(peer["max_abs_diff"])
        assert 0 <= peer["max_abs_diff"] <= peer["diff_tol"] < 1e-2
        assert peer["max_abs_diff"] < 1e-4
        if source == "torchvision":
            assert peer["params"] > record["params"]  # its classifier too
        else:
            assert peer["params"] == record["params"]  # our model, exported
        assert peer["ratio"] == pytest.approx(record["throughput"] / peer["throughput"])
        assert peer["ratio_best"] == pytest.approx(peer["latency_min_ms"] / record["latency_min_ms"])
        assert peer["latency_ms"] > 0 and peer["throughput"] == pytest.approx(1000.0 / peer["latency_ms"])
    if "onnxruntime" in ran:
        settings = by_source["onnxruntime"]["settings"]
        assert "ORT_ENABLE_ALL" in settings and "1 intra-op threads" in settings
        assert "session.intra_op.allow_spinning=0" in settings
        assert f"onnxruntime {by_source['onnxruntime']['version']} |" in table
    if "openvino" in ran:
        settings = by_source["openvino"]["settings"]
        assert "INFERENCE_PRECISION_HINT=f32" in settings and "INFERENCE_NUM_THREADS=1" in settings
    fastest = max((p for p in by_source.values() if p["status"] == "ok"), key=lambda p: p["throughput"])
    assert record["peer"] == fastest["peer"]
    assert record["ratio"] == pytest.approx(record["throughput"] / fastest["throughput"])
    assert "| max abs diff (tol) | check |" in table and record["hardware"] in table


@pytest.mark.parametrize("blocked, reason", [
    (("onnxruntime", "openvino"), {"onnxruntime": "onnxruntime not installed: pip install '.[bench]'",
                                   "openvino": "openvino not installed: pip install '.[bench]'"}),
    (("onnx",), {"onnxruntime": "onnx not installed (the ONNX export of the onnxruntime peer needs it): "
                                "pip install '.[bench]'",
                 "openvino": "onnx not installed (the ONNX export of the openvino peer needs it): "
                             "pip install '.[bench]'"}),
])
def test_missing_runtime_is_a_skipped_row(tmp_path: Path, monkeypatch, blocked, reason):
    """An import that fails (as when the package is not installed) skips the peer with the reason;
    our row is measured, the exit code stays 0 and nothing is exported."""
    for module in blocked:
        monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    monkeypatch.setattr(runtimes, "export_model", lambda *a, **k: pytest.fail("exported for skipped peers"))
    code, (record,), table = _run(tmp_path, _config(["onnxruntime", {"source": "openvino"}]))
    assert code == 0 and record["status"] == "ok" and record["latency_ms"] > 0
    assert {s: (p["status"], p["reason"]) for s, p in _peers(record).items()} == {
        s: ("skipped", r) for s, r in reason.items()}
    assert record["peer"] is None and record["ratio"] is None  # no peer was timed
    assert f"| onnxruntime | - | - | - | - | - | skipped: {reason['onnxruntime']} |" in table


@pytest.mark.skipif(not (INSTALLED["onnx"] and INSTALLED["onnxruntime"]), reason="needs onnx and onnxruntime")
def test_failing_export_and_mismatch_are_peer_errors(tmp_path: Path, monkeypatch):
    """A runtime that computes something else than ours is timed but flagged, and an export that
    fails is an error entry: our row is still measured, and the run exits 1."""
    real_run = runtimes.OnnxRuntimePeer.run
    monkeypatch.setattr(runtimes.OnnxRuntimePeer, "run", lambda self, a: [o + 0.05 for o in real_run(self, a)])
    code, (record,), table = _run(tmp_path, _config(["onnxruntime"]))
    peer = _peers(record)["onnxruntime"]
    assert code == 1 and record["status"] == "peer_error" and record["latency_ms"] > 0
    assert peer["status"] == "error" and peer["diff_ok"] is False and peer["max_abs_diff"] == pytest.approx(0.05, rel=1e-3)
    assert peer["reason"].startswith("outputs differ from ours") and peer["throughput"] > 0
    assert "MISMATCH" in table

    def broken(*args, **kwargs):
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(runtimes, "export_model", broken)
    code, (record,), table = _run(tmp_path, _config(["onnxruntime"]))
    assert code == 1 and record["status"] == "peer_error" and record["latency_ms"] > 0
    assert _peers(record)["onnxruntime"]["reason"] == "ONNX export failed: RuntimeError: exporter exploded"
    assert "ERROR: ONNX export failed" in table


def test_runtime_peers_skip_rows_they_do_not_apply_to():
    import torch

    from backbones_tools.bench.config import PeerSpec

    peer = PeerSpec(source="onnxruntime")
    cpu = torch.device("cpu")
    assert "inference only" in runtimes.skip_reason(peer, mode="train_step", device=cpu, dtype="float32")
    assert "CPU only" in runtimes.skip_reason(peer, mode="inference", device=torch.device("cuda"), dtype="float32")
    assert "float32 only" in runtimes.skip_reason(peer, mode="inference", device=cpu, dtype="bfloat16")
    openvino = PeerSpec(source="openvino")
    assert "float32 or bfloat16 only" in runtimes.skip_reason(openvino, mode="inference", device=cpu, dtype="float16")


@pytest.mark.skipif(not (INSTALLED["onnx"] and INSTALLED["openvino"]), reason="needs onnx and openvino")
@pytest.mark.skipif(not cpu_has_native_bf16(), reason="OpenVINO's bf16 hint needs a CPU with native bf16 (AVX512-BF16 or AMX)")
def test_openvino_runs_a_bf16_row_in_bf16(tmp_path: Path):
    """A bfloat16 row: ours in bf16, OpenVINO with its bf16 precision hint, outputs compared at the
    reduced-precision tolerance; ONNX Runtime (no bf16 CPU path) skipped with the reason."""
    code, (record,), _ = _run(tmp_path, _config(["onnxruntime", "openvino"], dtype="bfloat16"))
    assert code == 0 and record["status"] == "ok" and record["dtype"] == "bfloat16"
    by_source = _peers(record)
    assert by_source["onnxruntime"]["status"] == "skipped" and "float32 only" in by_source["onnxruntime"]["reason"]
    ov = by_source["openvino"]
    assert ov["status"] == "ok" and "INFERENCE_PRECISION_HINT=bf16" in ov["settings"], ov
    assert ov["diff_ok"] is True and 0 < ov["max_abs_diff"] <= ov["diff_tol"], ov  # bf16 rounding, within tolerance


# ------------------------------------------------------------------------------------------ train_step rows
def test_train_step_row_against_torchvision_gives_a_ratio():
    """resnet18 training steps (forward, loss, backward, the training tool's SGD) next to
    torchvision's with the same weights and batch: both timed, the ratio of their step times, and
    the same first loss; a runtime peer of a training row is skipped with the reason."""
    peers = [{"source": "torchvision", "name": "resnet18", "share_weights": True, "memory_format": "contiguous"},
             "onnxruntime"]
    config = BenchConfig.model_validate(_config(peers, repeats=2, models=[{**TRUNK, "mode": "train_step", "peers": peers}]))
    (record,) = run_benchmark(config, progress=False)
    assert record["status"] == "ok", record["error"]
    assert record["mode"] == "train_step" and record["amp"] == "none"
    assert record["memory_format"] == "contiguous"  # the training tool's choice in fp32 on a CPU
    tv, ort = record["peers"]
    assert tv["status"] == "ok" and tv["latency_ms"] > 0 and record["latency_ms"] > 0
    assert record["peer"] == tv["peer"]
    assert record["ratio"] == pytest.approx(tv["latency_ms"] / record["latency_ms"])
    assert 0.05 < record["ratio"] < 20  # the same network: not orders of magnitude apart
    assert tv["diff_ok"] is True and tv["max_abs_diff"] <= 1e-5  # same weights, batch and loss
    assert ort["status"] == "skipped" and "inference only" in ort["reason"]
    assert "| train_step |" in markdown_table([record])


# ------------------------------------------------------------------------------------------ checks
def _detections(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 700, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 100, (n, 2))], axis=1).astype(np.float32)
    return {"boxes": boxes, "labels": rng.integers(1, 5, n), "scores": np.sort(rng.uniform(0.05, 1, n))[::-1].astype(np.float32)}


def test_detections_are_compared_as_sets():
    ours = _detections(20)
    assert compare_detections([ours], [ours]).max_abs_diff == 0.0
    shuffled = {k: v[::-1].copy() for k, v in ours.items()}  # order does not matter
    near = {**shuffled, "boxes": shuffled["boxes"] + 0.01, "scores": shuffled["scores"] + 1e-5}
    diff = compare_detections([ours], [near])
    assert diff.ok and diff.max_abs_diff == pytest.approx(0.01, abs=1e-4) and "20/20 detections matched" in diff.note
    one_less = {k: v[1:] for k, v in ours.items()}  # NMS kept one box fewer: tolerated
    assert compare_detections([ours], [one_less]).ok
    moved = {**ours, "boxes": ours["boxes"] + 5.0}  # every box 5 px off: an export bug
    diff = compare_detections([ours], [moved])
    assert diff.ok is False and "0/20 detections matched" in diff.note
    relabelled = {**ours, "labels": ours["labels"] + 1}
    assert compare_detections([ours], [relabelled]).ok is False
    rescored = {**ours, "scores": ours["scores"] * 0.9}
    assert compare_detections([ours], [rescored]).ok is False
    empty = {k: v[:0] for k, v in ours.items()}
    assert compare_detections([empty], [empty]).ok and compare_detections([ours], [empty]).ok is False


def test_tensors_are_compared_relative_to_their_scale():
    ours = [np.full((2, 3), 100.0), np.ones(4)]
    assert compare_tensors(ours, [o.copy() for o in ours], FP32_RTOL).ok
    off = [ours[0] + 5e-3, ours[1]]  # 5e-5 of the scale 100
    diff = compare_tensors(ours, off, FP32_RTOL)
    assert diff.ok and diff.max_abs_diff == pytest.approx(5e-3, rel=1e-3)
    diff = compare_tensors(ours, [ours[0], ours[1] + 1e-3], FP32_RTOL)  # 1e-3 of the scale 1
    assert diff.ok is False and diff.max_abs_diff == pytest.approx(1e-3, rel=1e-3)
    assert compare_tensors(ours, ours[:1], FP32_RTOL).ok is None  # not comparable: not a pass
