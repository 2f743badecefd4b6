"""Runtime peers: our model exported to ONNX (the project's exporter,
:mod:`backbones_tools.deploy.onnx_export`) and run in ONNX Runtime or OpenVINO on the CPU, with the
same weights, input and thread count as ours.

ONNX Runtime: ``CPUExecutionProvider``, ``ORT_ENABLE_ALL`` graph optimisations, sequential
execution with ``intra_op_num_threads`` = the row's threads, and its threads do not spin while idle
(``session.intra_op.allow_spinning=0``), so that, timed in turns with the other models, an idle
pool does not take cores from them. OpenVINO: the ``CPU`` device, ``INFERENCE_PRECISION_HINT=f32``
(on a CPU with AVX512-BF16 or AMX it would otherwise run bf16; ``bf16`` in a bfloat16 row), ``INFERENCE_NUM_THREADS`` = the
row's threads, one stream, the latency hint, and the input reshaped to the row's static shape (as
one deploys at a fixed size). A peer's ``kwargs`` add to or override these (ORT: session config
entries; OpenVINO: compile properties).

A runtime that is not installed, or a row it does not apply to (training steps, a GPU, a dtype it
does not run: see :data:`RUNTIME_DTYPES`), gives a skipped peer with the reason, not a failure.
"""

from __future__ import annotations

import copy
import importlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from backbones_tools.bench.config import PeerSpec

INSTALL_HINT = "pip install '.[bench]'"
#: Packages each runtime peer needs: the runtime, and onnx for the export.
PACKAGES = {"onnxruntime": ("onnxruntime", "onnx"), "openvino": ("openvino", "onnx")}
#: The exporter's kind of each benchmark kind.
EXPORT_KINDS = {"backbone": "trunk", "fpn_backbone": "fpn", "segmenter": "segmenter", "detector": "detector"}
#: Row dtypes each runtime runs: OpenVINO computes bfloat16 rows in bf16 (``INFERENCE_PRECISION_HINT=bf16``,
#: fp32 input and output, as ``optimize_for_inference(dtype=torch.bfloat16)``); ONNX Runtime has no bf16 CPU path.
RUNTIME_DTYPES = {"onnxruntime": ("float32",), "openvino": ("float32", "bfloat16")}
#: Session config entries of ONNX Runtime (a peer's kwargs override them).
ORT_DEFAULT_ENTRIES = {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"}


def missing_package(source: str) -> str | None:
    """Why runtime peer ``source`` cannot run here (a package is not installed), else None."""
    for module in PACKAGES[source]:
        try:
            importlib.import_module(module)
        except ImportError:
            why = "" if module == source else f" (the ONNX export of the {source} peer needs it)"
            return f"{module} not installed{why}: {INSTALL_HINT}"
    return None


def skip_reason(peer: PeerSpec, *, mode: str, device: torch.device, dtype: str) -> str | None:
    """Why runtime peer ``peer`` does not run in this row, else None."""
    if mode != "inference":
        return f"{peer.source} measures inference only (this row is a {mode})"
    if device.type != "cpu":
        return f"{peer.source} runs on the CPU only here (the row's device is {device})"
    if dtype not in RUNTIME_DTYPES[peer.source]:
        return f"{peer.source} runs {' or '.join(RUNTIME_DTYPES[peer.source])} only here (the row's dtype is {dtype})"
    return missing_package(peer.source)


def version(source: str) -> str:
    module = importlib.import_module(source)
    return str(getattr(module, "__version__", "?")).split("-")[0]


def export_model(model: nn.Module, kind: str, size: int, directory: str | Path) -> tuple[Any, Path]:
    """Export a float32 CPU copy of ``model`` (eval mode, before ``optimize_for_inference``, whose
    fused ops have no ONNX form) with the project's exporter; returns its ``ExportTarget`` and the
    ``.onnx`` file."""
    from backbones_tools.deploy.onnx_export import export_onnx, module_target

    clone = copy.deepcopy(model).float().cpu().eval()
    target = module_target(clone, EXPORT_KINDS[kind], size=(size, size), description=f"{kind} for the runtime peers")
    return target, export_onnx(target, Path(directory) / "model.onnx")


def input_arrays(kind: str, inputs: Any) -> list[np.ndarray]:
    """The row's input as the exported model takes it: one NCHW array, or one ``[3, H, W]`` array
    per image of a detector (the export takes one image per call)."""
    if kind == "detector":
        return [np.ascontiguousarray(image.detach().float().cpu().numpy()) for image in inputs]
    return [np.ascontiguousarray(inputs.detach().float().cpu().contiguous().numpy())]


class RuntimePeer:
    """A runtime running the exported model: :meth:`step` (timed) runs every input array once;
    :meth:`outputs` gives, per array, the outputs in ``target.output_names`` order."""

    source = "runtime"

    def __init__(self, peer: PeerSpec, target: Any, path: Path, arrays: list[np.ndarray], threads: int,
                 dtype: str = "float32") -> None:
        self.peer = peer
        self.dtype = dtype
        self.path = path
        self.target = target
        self.arrays = arrays
        self.threads = threads
        self.version = version(self.source)
        self.settings = ""

    def run(self, array: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError

    def step(self) -> None:
        for array in self.arrays:
            self.run(array)

    def outputs(self) -> list[list[np.ndarray]]:
        return [[np.array(a, copy=True) for a in self.run(array)] for array in self.arrays]


class OnnxRuntimePeer(RuntimePeer):
    source = "onnxruntime"

    def __init__(self, peer: PeerSpec, target: Any, path: Path, arrays: list[np.ndarray], threads: int,
                 dtype: str = "float32") -> None:
        super().__init__(peer, target, path, arrays, threads, dtype)
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        entries = {**ORT_DEFAULT_ENTRIES, **{k: str(v) for k, v in peer.kwargs.items()}}
        for key, value in entries.items():
            options.add_session_config_entry(key, value)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = target.input_name
        self.settings = (f"CPUExecutionProvider, ORT_ENABLE_ALL, {threads} intra-op threads, "
                         + ", ".join(f"{k}={v}" for k, v in entries.items()))

    def run(self, array: np.ndarray) -> list[np.ndarray]:
        return self.session.run(list(self.target.output_names), {self.input_name: array})


class OpenVinoPeer(RuntimePeer):
    source = "openvino"

    def __init__(self, peer: PeerSpec, target: Any, path: Path, arrays: list[np.ndarray], threads: int,
                 dtype: str = "float32") -> None:
        super().__init__(peer, target, path, arrays, threads, dtype)
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(path))
        model.reshape({target.input_name: list(arrays[0].shape)})  # static: the row's input shape
        precision = "bf16" if dtype == "bfloat16" else "f32"
        properties = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1,
                      "PERFORMANCE_HINT": "LATENCY", **peer.kwargs}
        self.compiled = core.compile_model(model, "CPU", properties)
        self.request = self.compiled.create_infer_request()
        by_name = {o.get_any_name(): o for o in self.compiled.outputs}
        self.ports = [by_name[name] for name in target.output_names]
        used = {k: self.compiled.get_property(k) for k in ("INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS",
                                                           "NUM_STREAMS", "ENABLE_CPU_PINNING")}
        used["INFERENCE_PRECISION_HINT"] = getattr(used["INFERENCE_PRECISION_HINT"], "get_type_name",
                                                   lambda: used["INFERENCE_PRECISION_HINT"])()
        self.settings = "CPU, " + ", ".join(f"{k}={v}" for k, v in used.items())

    def run(self, array: np.ndarray) -> list[np.ndarray]:
        result = self.request.infer({0: array}, share_inputs=True, share_outputs=True)
        return [result[port] for port in self.ports]


RUNTIMES = {"onnxruntime": OnnxRuntimePeer, "openvino": OpenVinoPeer}


def make_runtime_peer(peer: PeerSpec, target: Any, path: Path, arrays: list[np.ndarray], threads: int,
                      dtype: str = "float32") -> RuntimePeer:
    """The runner of runtime peer ``peer`` on the exported ``target`` (file ``path``) for a row of ``dtype``."""
    return RUNTIMES[peer.source](peer, target, path, arrays, threads, dtype)
