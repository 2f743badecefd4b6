"""``OneDnnGraph``: the opt-in TorchScript + oneDNN Graph path computes what the model computes, and
the fuser actually runs."""

from __future__ import annotations

import copy

import pytest
import torch

from backbones import OneDnnGraph, create_backbone, create_fpn_backbone
from backbones.onednn_graph import has_onednn_graph
from heads import build_segmenter
from tests.helpers import assert_close_rel, assert_outputs_close_rel, randomize_norms_

pytestmark = pytest.mark.skipif(not has_onednn_graph(), reason="needs TorchScript's oneDNN Graph fuser")


def _fused_partitions() -> int:
    return str(torch.jit.last_executed_optimized_graph()).count("oneDNNFusionGroup")


def _pair(model: torch.nn.Module) -> tuple[torch.nn.Module, OneDnnGraph]:
    model = randomize_norms_(model).eval()
    return model, OneDnnGraph(copy.deepcopy(model))


def test_trunk_taps_unchanged_and_fused():
    ref, graph = _pair(create_backbone("resnet18", out_features=("c3", "c5"), norm="FrozenBN"))
    assert not torch.jit.onednn_fusion_enabled()
    for shape in ((2, 3, 64, 80), (1, 3, 96, 64)):  # the second shape reuses the trace
        x = torch.randn(shape)
        with torch.inference_mode():
            expected, got = ref(x), graph(x)
        assert _fused_partitions() > 0, "the oneDNN Graph fuser did not run"
        assert list(got) == ["c3", "c5"]
        for tap in expected:
            assert_close_rel(got[tap], expected[tap], rtol=1e-5, what=f"{tap} at {shape}")
    assert not torch.jit.onednn_fusion_enabled(), "the process-wide fuser switch was left on"
    assert copy.deepcopy(graph)._graph is None


def test_fpn_backbone_unchanged():
    ref, graph = _pair(create_fpn_backbone("res2net50_26w_4s"))  # Res2Net's splits and concatenations too
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert_outputs_close_rel(graph(x), ref(x), rtol=1e-5, what="FPN")


def test_what_it_cannot_run_is_a_clear_error():
    graph = OneDnnGraph(create_backbone("resnet18", out_features=("c2",)))
    with pytest.raises(RuntimeError, match="inference"):
        graph(torch.randn(1, 3, 32, 32, requires_grad=True))
    with pytest.raises(TypeError, match="one image batch tensor; got list"):
        graph([torch.randn(3, 32, 32)])
    segmenter = OneDnnGraph(build_segmenter("deeplabv3", backbone="resnet18", num_classes=3, aux=False))
    with torch.no_grad(), pytest.raises(RuntimeError, match="cannot run DeepLabV3.*optimize_for_inference"):
        segmenter(torch.randn(1, 3, 64, 64))
    assert not torch.jit.onednn_fusion_enabled()
