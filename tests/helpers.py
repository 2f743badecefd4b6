"""Helpers shared by the tests: random but well-conditioned weights, relative comparisons."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


@torch.no_grad()
def randomize_norms_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every norm layer random affine parameters and running statistics, and every conv
    bias random values.

    Default initialisation (and timm's zero-init of the last BN) would make many comparisons
    vacuous: a zero scale hides whatever its branch computes.
    """
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm)) or type(m).__name__ == "FrozenBatchNorm2d":
            n = m.weight.numel()
            m.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.5)
            m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
            if getattr(m, "running_mean", None) is not None:
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
        elif isinstance(m, nn.Conv2d) and m.bias is not None:
            m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
    return model


def assert_close_rel(ours: torch.Tensor, ref: torch.Tensor, rtol: float = 1e-5, what: str = "") -> None:
    """max |ours - ref| <= rtol * max |ref| (the tolerance relative to the output scale)."""
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    scale = ref.abs().max().item()
    err = (ours - ref).abs().max().item()
    assert scale > 0, f"{what}: reference output is all zero; the comparison would be vacuous"
    assert err <= rtol * scale, f"{what}: max abs diff {err:.3g} > {rtol} x output scale {scale:.3g}"


def assert_outputs_close_rel(ours: Mapping[str, torch.Tensor], ref: Mapping[str, torch.Tensor], rtol: float = 1e-5,
                             what: str = "") -> None:
    """The same keys in the same order, and :func:`assert_close_rel` on each value."""
    assert list(ours) == list(ref), f"{what}: keys {list(ours)} != {list(ref)}"
    for key in ref:
        assert_close_rel(ours[key], ref[key], rtol=rtol, what=f"{what} {key}".strip())
