"""``torch.export`` captures every block family, and the exported program computes the same maps."""

from __future__ import annotations

import pytest
import torch

from backbones import TAPS, create_backbone
from tests.helpers import randomize_norms_


@pytest.mark.parametrize(
    "name, options",
    [
        ("resnet18", {}),
        ("resnet50d", {"output_stride": 16}),
        ("resnext50_32x4d", {"norm": "FrozenBN"}),
        ("res2net50_26w_4s", {"norm": "GN"}),
    ],
)
def test_export_matches_eager(name: str, options: dict):
    model = randomize_norms_(create_backbone(name, out_features=TAPS, **options)).eval()
    x = torch.randn(1, 3, 64, 96)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        expected = model(x)
        got = exported.module()(x)
    assert list(got) == list(expected)
    for tap in expected:
        torch.testing.assert_close(got[tap], expected[tap], rtol=1e-5, atol=1e-5)
