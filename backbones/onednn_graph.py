"""Opt-in CPU inference through PyTorch's oneDNN Graph fuser (TorchScript "LLGA").

:class:`OneDnnGraph` runs a model as a frozen TorchScript trace with
``torch.jit.enable_onednn_fusion``: freezing folds the batch norms, and the fuser hands whole chains
of convolutions, biases, ReLUs and residual adds to oneDNN as fused partitions, which keep oneDNN's
blocked layouts between them and skip most of PyTorch's per-operator work. On a 2-core AMD EPYC
(AVX512-BF16, fp32, batch 8 at 224 px) that made ResNet-50 and ResNeXt-50 trunks 8-13% faster than
``optimize_for_inference`` (about as fast as OpenVINO), but Res2Net 30% slower (its splits and
concatenations break the partitions): measure before you choose it (``tools/benchmark.py`` rows with
``onednn_graph: true``; ``python tools/measure_inference.py --onednn-graph``).

Not the default because it rests on TorchScript, which PyTorch has deprecated (``torch.jit.trace``
and ``torch.jit.freeze`` warn): it works as long as PyTorch ships it, and says so clearly when it
does not. Inference only (no autograd), for trunks and FPN backbones: the detectors' post-processing
depends on the data (a trace cannot capture it), and the fuser fails on the DeepLab heads' ASPP
(torch 2.14), which it reports as an error naming ``optimize_for_inference``.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from .inference import optimize_layers

__all__ = ["OneDnnGraph", "has_onednn_graph"]


def has_onednn_graph() -> bool:
    """Whether this torch build has TorchScript's oneDNN Graph fuser."""
    return (callable(getattr(torch.jit, "enable_onednn_fusion", None))
            and callable(getattr(torch.jit, "freeze", None)) and torch.backends.mkldnn.is_available())


class OneDnnGraph(nn.Module):
    """``model`` (in eval mode) run as a frozen TorchScript trace with oneDNN Graph fusion, for CPU
    inference. It is traced on the first call, for that call's input; a later input of another
    shape reuses the trace (the fuser compiles its partitions per shape, on first use). Outputs are
    those of ``model`` (a tensor, or a dict of tensors such as a trunk's taps), up to float rounding.

    On the first call it folds ``model``'s norms into its convolutions in place (as
    ``optimize_for_inference`` does), and switches ``torch.jit.enable_onednn_fusion`` on for the
    process while it traces and warms up, restoring it after.
    """

    def __init__(self, model: nn.Module, *, channels_last: bool = True) -> None:
        super().__init__()
        if not has_onednn_graph():
            raise RuntimeError(
                f"OneDnnGraph needs TorchScript's oneDNN Graph fuser, which torch {torch.__version__} does not "
                "have; use optimize_for_inference instead")
        self.model = model.eval()
        self.channels_last = channels_last
        self._graph: torch.jit.ScriptModule | None = None
        self._dict_output = False

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles leave the trace out (it is rebuilt on first use)."""
        return {**super().__getstate__(), "_graph": None}

    def _trace(self, x: torch.Tensor) -> torch.jit.ScriptModule:
        # the norms folded first (also FrozenBatchNorm2d, which freezing leaves alone); the ReLUs and
        # residual adds are left to the fuser
        model = optimize_layers(self.model, channels_last=self.channels_last, fuse=False)
        was_on = torch.jit.onednn_fusion_enabled()
        torch.jit.enable_onednn_fusion(True)
        try:
            with warnings.catch_warnings():  # TorchScript's deprecation and tracer warnings, said once above
                warnings.simplefilter("ignore")
                graph = torch.jit.freeze(torch.jit.trace(model, x, strict=False, check_trace=False))
                for _ in range(2):  # the profiling executor fuses on the second run
                    out = graph(x)
        except RuntimeError as exc:  # e.g. the fuser's partitions around DeepLab's ASPP concatenation
            reason = str(exc).strip().splitlines()[-1]
            raise RuntimeError(f"OneDnnGraph cannot run {type(self.model).__name__} ({reason}); "
                               "use optimize_for_inference") from exc
        finally:
            torch.jit.enable_onednn_fusion(was_on)
        self._dict_output = isinstance(out, dict)
        return graph

    def forward(self, x: torch.Tensor) -> Any:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"OneDnnGraph takes one image batch tensor; got {type(x).__name__}")
        if torch.is_grad_enabled() and x.requires_grad:
            raise RuntimeError("OneDnnGraph is for inference: call it under torch.no_grad() or torch.inference_mode()")
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            if self._graph is None:
                self._graph = self._trace(x)
            out = self._graph(x)
        return OrderedDict(out) if self._dict_output else out
