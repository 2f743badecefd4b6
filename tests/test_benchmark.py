"""The benchmark tool: published FLOP counts, config validation, an end-to-end run with a failing row."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from backbones import create_backbone
from backbones.cpu_memory import _glibc
from backbones_tools.bench.config import BenchConfig, load_bench_config, validate_bench_config
from backbones_tools.bench.measure import count_gmacs, summarize
from backbones_tools.bench.report import hardware_lines, markdown_table
from backbones_tools.bench.runner import expand_rows, row_request, run_benchmark
from backbones_tools.config.loader import ConfigError

REPO = Path(__file__).resolve().parents[1]
REQUIRED = ("model", "input_size", "batch", "mode", "params", "gmacs", "latency_ms", "throughput",
            "peak_mem_mb", "peer", "peer_throughput", "ratio")

#: Published GMACs at 224x224 (torchvision / timm model cards); the classifier adds < 0.1%.
PUBLISHED_GMACS = {"resnet50": 4.09, "resnet101": 7.80, "resnext50_32x4d": 4.23, "res2net50_26w_4s": 4.26}


@pytest.mark.parametrize("name, published", PUBLISHED_GMACS.items())
def test_flops_match_published(name: str, published: float):
    model = create_backbone(name, out_features=("c5",)).to("meta")
    x = torch.empty(1, 3, 224, 224, device="meta")
    assert count_gmacs(lambda: model(x)) == pytest.approx(published, rel=0.01)


def _config(**overrides) -> dict:
    base = {"models": [{"model": "resnet18", "options": {"out_features": ["c3"]}}], "input_sizes": [32],
            "batch_sizes": [1], "warmup": 0, "repeats": 1, "threads": 1}
    base.update(overrides)
    return base


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"models": [{"model": "resnet5O"}]}, r"models\.0.*unknown backbone 'resnet5O'; did you mean resnet50"),
        ({"batch_sizes": [8, -1]}, r"batch_sizes: .*positive integers"),
        ({"repeats": 0}, r"repeats: .*greater than or equal to 1"),
        ({"models": [{"model": "faster_rcnn", "type": "detector"}]}, r"needs 'backbone'"),
        ({"models": [{"model": "fastr_rcnn", "type": "detector", "backbone": "resnet50"}]}, r"unknown detector kind"),
        ({"models": [{"model": "resnet50", "peers": [{"source": "timm", "name": "resnet5"}]}]}, r"unknown timm model"),
        ({"mdoels": []}, r"unknown key 'mdoels'"),
        ({"device": "gpu"}, r"device"),
        # peers: an unknown runtime or source, by name or in full, is named with a suggestion
        ({"models": [{"model": "resnet50", "peers": ["onnxrutime"]}]},
         (r"models\.0\.peers\.0: unknown peer 'onnxrutime'; did you mean onnxruntime\? "
          r"\(peers: torchvision, timm, onnxruntime, openvino\)")),
        ({"models": [{"model": "resnet50", "peers": [{"source": "openvion"}]}]},
         r"unknown peer 'openvion'; did you mean openvino"),
        ({"models": [{"model": "resnet50", "peers": [{"source": "tensorrt"}]}]}, r"unknown peer 'tensorrt' \(peers: "),
        ({"models": [{"model": "resnet50", "peers": [{"source": "onnxruntime", "name": "resnet50"}]}]},
         r"onnxruntime peer runs our model exported to ONNX, with our weights; it takes no 'name'"),
        ({"models": [{"model": "resnet50", "peers": [{"source": "torchvision"}]}]}, r"torchvision peer needs 'name'"),
        ({"models": [{"model": "resnet50", "mode": "training"}]}, r"models\.0\.mode: .*'inference' or 'train_step'"),
        ({"dtype": "bfloat16", "models": [{"model": "resnet18", "mode": "train_step", "amp": "bf16"}]},
         r"amp bf16 autocasts a float32 model"),
        # options a row would accept and not honour
        ({"models": [{"model": "resnet18", "amp": "bf16"}]}, r"amp bf16 applies to train_step rows"),
        ({"amp": "bf16"}, r"amp bf16 applies to train_step rows; this config has none"),
        ({"models": [{"model": "resnet50", "peers": [{"source": "openvino", "share_weights": True}]}]},
         r"openvino peer runs our model .* takes no 'share_weights'"),
        ({"models": [{"model": "resnet50", "peers": [{"source": "onnxruntime", "memory_format": "contiguous"}]}]},
         r"takes no 'memory_format'"),
        ({"models": [{"model": "resnet18", "onednn_graph": True, "mode": "train_step"}]},
         r"onednn_graph applies to inference rows on the cpu; this model's rows are train_step"),
        ({"models": [{"model": "deeplabv3", "type": "segmenter", "backbone": "resnet18", "onednn_graph": True}]},
         r"onednn_graph runs trunks and FPN backbones, not a segmenter"),
        ({"models": [{"model": "resnet18", "onednn_graph": True, "compile": True}]}, r"onednn_graph and compile"),
        ({"models": [{"model": "resnet18", "onednn_graph": True, "optimize": False}]}, r"optimize: false would be ignored"),
    ],
)
def test_bad_config_is_a_clear_error(overrides: dict, message: str):
    with pytest.raises(ConfigError, match=message):
        validate_bench_config(_config(**overrides), "test.yaml")


def test_every_shipped_row_reaches_its_worker_process_as_configured():
    """An isolated row sends its config to a fresh process, which validates it again: it must come out
    equal (the runtime peers of runtimes_cpu.yaml once failed there, their defaults sent as if set)."""
    for path in sorted((REPO / "configs" / "bench").glob("[!_]*.yaml")):
        config = load_bench_config(path)
        for row in expand_rows(config):
            request = json.loads(json.dumps(row_request(config, row)))
            assert BenchConfig.model_validate(request["config"]) == config, path.name
            assert (request["model_index"], request["size"], request["batch"]) == (row.model_index, row.size, row.batch)


def test_shipped_configs_load():
    names = {p.stem for p in (REPO / "configs" / "bench").glob("*.yaml") if not p.stem.startswith("_")}
    assert {"backbones_cpu", "detectors_cpu", "backbones_gpu", "detectors_gpu", "train_step_cpu",
            "runtimes_cpu"} <= names
    for name in sorted(names):  # every shipped config, a new one included
        config = load_bench_config(REPO / "configs" / "bench" / f"{name}.yaml")
        assert expand_rows(config), name
    cpu = load_bench_config(REPO / "configs" / "bench" / "backbones_cpu.yaml", ["repeats=3"])
    assert cpu.repeats == 3 and cpu.batch_sizes == [8] and cpu.input_sizes == [224]
    assert not any(p.is_runtime for spec in cpu.models for p in spec.peers)  # its ratio: vs torchvision/timm
    runtimes = load_bench_config(REPO / "configs" / "bench" / "runtimes_cpu.yaml")
    assert {spec.model: [p.source for p in spec.peers if p.is_runtime] for spec in runtimes.models} == {
        m: ["onnxruntime", "openvino"] for m in ("resnet50", "resnext50_32x4d", "res2net50_26w_4s")}
    detectors = load_bench_config(REPO / "configs" / "bench" / "detectors_cpu.yaml")
    assert [p.label for p in detectors.models[0].peers][1:] == ["onnxruntime", "openvino"]
    train = load_bench_config(REPO / "configs" / "bench" / "train_step_cpu.yaml")
    assert [(s.name, train.mode_of(s), train.amp_of(s), s.peers[0].name, s.peers[0].share_weights) for s in train.models] == [
        ("faster_rcnn_resnet50", "train_step", "none", "fasterrcnn_resnet50_fpn", True),
        ("deeplabv3_resnet50", "train_step", "none", "deeplabv3_resnet50", True),
    ]


def test_summary_statistics():
    stats = summarize([0.1, 0.2, 0.3, 0.4, 0.5], batch=4)
    assert stats["latency_ms"] == pytest.approx(300.0)
    assert stats["latency_p10_ms"] == pytest.approx(140.0) and stats["latency_p90_ms"] == pytest.approx(460.0)
    assert stats["throughput"] == pytest.approx(4 / 0.3)


def test_end_to_end_with_a_failing_row(tmp_path: Path):
    """Two rows in fresh subprocesses: one measured next to its torchvision peer, one that fails."""
    import yaml

    from backbones_tools.benchmark import main

    config = _config(
        models=[
            {"model": "resnet18", "options": {"out_features": ["c5"]},
             "peers": [{"source": "torchvision", "name": "resnet18"}]},
            {"model": "resnet18", "label": "broken", "options": {"output_stride": 5}},
        ],
        repeats=2,
    )
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    assert main(["--config", str(path), "--output-dir", str(out), "--no-progress", "--set", "input_sizes=[48]"]) == 1

    records = json.loads((out / "results.json").read_text())["results"]
    assert [r["model"] for r in records] == ["resnet18", "broken"]
    ok, broken = records
    assert ok["status"] == "ok" and all(ok[k] is not None for k in REQUIRED)
    assert ok["input_size"] == 48 and ok["params"] == 11_176_512
    assert ok["peer"].startswith("torchvision:resnet18") and ok["ratio"] == pytest.approx(ok["throughput"] / ok["peer_throughput"])
    assert ok["latency_min_ms"] <= ok["latency_p10_ms"] <= ok["latency_ms"] <= ok["latency_p90_ms"]
    assert ok["peak_mem_mb"] > 0 and ok["ratio_best"] > 0
    assert broken["status"] == "error" and "output_stride" in broken["error"]
    kept = "malloc keeps freed memory" if _glibc() else "default"  # keep_freed_memory: true by default
    assert ok["allocator"] == kept

    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert set(REQUIRED) <= set(rows[0]) and [r["status"] for r in rows] == ["ok", "error"]
    assert (out / "throughput_vs_gmacs.png").stat().st_size > 1000
    table = (out / "results.md").read_text()
    assert "| resnet18 | 48 | 1 | inference |" in table and "FAILED: ValueError" in table
    assert f"threads, {kept})" in table.splitlines()[0]


def test_the_allocator_setting_can_be_left_alone():
    """keep_freed_memory: false in a fresh worker process: glibc's defaults, said in the header."""
    config = BenchConfig.model_validate(_config(keep_freed_memory=False, repeats=1, models=[
        {"model": "resnet18", "options": {"out_features": ["c2"]}}], input_sizes=[32]))
    (record,) = run_benchmark(config, progress=False)
    assert record["status"] == "ok" and record["allocator"] == "default", record
    assert hardware_lines([record])[0].endswith("threads, default)")


def test_onednn_graph_row_in_process(monkeypatch: pytest.MonkeyPatch):
    """A row with onednn_graph: true runs ours as backbones.OneDnnGraph, and says so."""
    from backbones.onednn_graph import OneDnnGraph, has_onednn_graph

    if not has_onednn_graph():
        pytest.skip("needs TorchScript's oneDNN Graph fuser")
    traced = []
    trace = OneDnnGraph._trace
    monkeypatch.setattr(OneDnnGraph, "_trace", lambda self, x: traced.append(x.shape) or trace(self, x))
    config = BenchConfig.model_validate(_config(isolate=False, repeats=1, input_sizes=[48], models=[
        {"model": "resnet18", "options": {"out_features": ["c5"]}, "onednn_graph": True,
         "peers": [{"source": "torchvision", "name": "resnet18", "share_weights": True}]}]))
    (record,) = run_benchmark(config, progress=False)
    assert record["status"] == "ok", record["error"]
    assert record["onednn_graph"] is True and record["optimized"] is False and traced
    (peer,) = record["peers"]
    assert peer["status"] == "ok" and peer["diff_ok"] is True, peer  # same outputs as torchvision's
    assert 0 < peer["max_abs_diff"] <= peer["diff_tol"]


def test_train_step_in_process():
    config = BenchConfig.model_validate(_config(mode="train_step", isolate=False, models=[
        {"model": "resnet18", "options": {"out_features": ["c3"]}},
        {"model": "faster_rcnn", "type": "detector", "backbone": "resnet18",
         "options": {"min_size": 64, "max_size": 64}},
        {"model": "deeplabv3", "type": "segmenter", "backbone": "resnet18", "options": {"aux": True}},
    ]))
    records = run_benchmark(config, progress=False)
    assert [r["status"] for r in records] == ["ok", "ok", "ok"], [r["error"] for r in records]
    assert all(r["mode"] == "train_step" and r["throughput"] > 0 for r in records)
    # the training tool's CPU speed-up (train.fast_roi_align) applies where there is a RoI-align
    assert [r["optimized"] for r in records] == [False, True, False]
    assert "| train_step |" in markdown_table(records)


def test_bad_config_file_exits_2(tmp_path: Path, capsys):
    from backbones_tools.benchmark import main

    path = tmp_path / "bad.yaml"
    path.write_text("models: [{model: resnet50}]\nbatch_sizes: [-8]\n")
    assert main(["--config", str(path)]) == 2
    assert "batch_sizes" in capsys.readouterr().err


def test_hardware_names_the_winograd_transforms(monkeypatch: pytest.MonkeyPatch):
    """CPU rows say which Winograd transforms ran (they decide which layers take Winograd)."""
    import backbones.winograd as winograd
    from backbones_tools.bench.measure import hardware

    monkeypatch.setattr(winograd, "fused_transforms", lambda: None)
    assert hardware(torch.device("cpu")).endswith("Winograd transforms: PyTorch ops (no Numba))")
    pytest.importorskip("numba")
    monkeypatch.setattr(winograd, "fused_transforms", lambda: object())
    assert "Winograd transforms: Numba " in hardware(torch.device("cpu"))
