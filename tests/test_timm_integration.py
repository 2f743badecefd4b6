"""This package's trunks through timm's registry, and inside the third-party packages that build
backbones with ``timm.create_model``: segmentation_models_pytorch and transformers (DETR)."""

from __future__ import annotations

import pytest
import torch

from backbones import UnknownBackboneError, create_backbone
from tests.helpers import randomize_norms_

timm = pytest.importorskip("timm")
from backbones.timm_models import PREFIX, check_timm_name, register_timm_models  # noqa: E402

register_timm_models()


def _has_dcn(stage: torch.nn.Module) -> bool:
    return any("Deform" in type(m).__name__ for m in stage.modules())


def _copy_prefixed(src: torch.nn.Module, dst: torch.nn.Module, theirs: str, ours: str) -> None:
    """Load ``src``'s state into ``dst``, renaming key prefix ``theirs`` (timm's trunk) to ``ours``."""
    state = {(ours + k[len(theirs):] if k.startswith(theirs) else k): v for k, v in src.state_dict().items()}
    dst.load_state_dict(state, strict=True)


def test_timm_contract_and_same_maps_as_create_backbone() -> None:
    model = timm.create_model(f"{PREFIX}res2net50_26w_4s", features_only=True, out_indices=(1, 2, 3, 4),
                              pretrained=False, output_stride=16, frozen_stages=1)
    assert model.feature_info.channels() == [256, 512, 1024, 2048]
    assert model.feature_info.reduction() == [4, 8, 16, 16]
    assert model.feature_info.module_name() == ["trunk.layer1", "trunk.layer2", "trunk.layer3", "trunk.layer4"]
    ref = randomize_norms_(create_backbone("res2net50_26w_4s", output_stride=16, frozen_stages=1)).eval()
    model.trunk.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        got, want = model.eval()(x), ref(x)
    assert len(got) == 4
    for tensor, tap in zip(got, ("c2", "c3", "c4", "c5")):
        assert torch.equal(tensor, want[tap])
    stem_only = timm.create_model(f"{PREFIX}resnet18", features_only=True, out_indices=(0,))
    assert stem_only.feature_info.reduction() == [2] and not hasattr(stem_only.trunk, "layer1")


def test_options_weights_and_errors(tmp_path) -> None:
    ref = create_backbone("resnet18")
    torch.save(ref.state_dict(), tmp_path / "r18.pth")
    model = timm.create_model(f"{PREFIX}resnet18", features_only=True, weights=str(tmp_path / "r18.pth"))
    for key, value in ref.state_dict().items():
        assert torch.equal(model.trunk.state_dict()[key], value), key
    with pytest.raises(ValueError) as ours:
        timm.create_model(f"{PREFIX}resnet18", features_only=True, frozen_stage=1)
    with pytest.raises(ValueError) as direct:
        create_backbone("resnet18", frozen_stage=1)
    assert str(ours.value) == str(direct.value)
    with pytest.raises(ValueError, match="features_only=True"):
        timm.create_model(f"{PREFIX}resnet18")
    with pytest.raises(ValueError, match="no hub weights"):
        timm.create_model(f"{PREFIX}resnet18", features_only=True, pretrained=True)
    with pytest.raises(UnknownBackboneError, match="did you mean backbones_resnet18"):
        check_timm_name("tu-backbones_resnet81")
    assert check_timm_name("tu-backbones_resnext50_32x4d") == "resnext50_32x4d"
    from backbones.timm_models import register_timm_model

    with pytest.raises(ValueError, match="unknown option"):
        register_timm_model("backbones_test_bad", "resnet50", dcn_stage=[4])


def test_registered_defaults_need_stages_and_timm_options() -> None:
    from backbones.timm_models import register_timm_model

    # options that act on stages (checked as timm.create_model will use them, not on a stem-only trunk)
    name = register_timm_model("backbones_test_defaults", "resnet50", frozen_stages=1, output_stride=16,
                               multi_grid=[1, 2, 4])
    model = timm.create_model(name, features_only=True, out_indices=(1, 2, 3, 4))
    assert not any(p.requires_grad for p in model.trunk.layer1.parameters())
    assert all(p.requires_grad for p in model.trunk.layer2.parameters())
    assert [b.conv2.dilation for b in model.trunk.layer4] == [(2, 2), (4, 4), (8, 8)]
    one = timm.create_model(register_timm_model("backbones_test_gray", "resnet18", in_chans=1), features_only=True)
    assert one.trunk.conv1.weight.shape == (64, 1, 7, 7)  # timm's in_chans -> in_channels


@pytest.mark.parametrize("out_indices, channels", [(2, [256, 512]), ((-1,), [512]), ((0, 2), [64, 128])])
def test_out_indices_forms(out_indices, channels) -> None:
    model = timm.create_model(f"{PREFIX}resnet18", features_only=True, out_indices=out_indices)
    assert model.feature_info.channels() == channels


@pytest.mark.parametrize("bad", ["c5", 4.0, (1, 2.0), True, (2, 1), (5,)])
def test_bad_out_indices_are_named(bad) -> None:
    with pytest.raises(ValueError, match="out_indices must be an int n"):
        timm.create_model(f"{PREFIX}resnet18", features_only=True, out_indices=bad)


# ----------------------------------------------------------------------------- segmentation_models_pytorch


def test_smp_unet_equals_smps_own_timm_resnet_and_trains() -> None:
    smp = pytest.importorskip("segmentation_models_pytorch")
    theirs = smp.Unet("tu-resnet18", encoder_weights=None, classes=5).eval()
    ours = smp.Unet(f"tu-{PREFIX}resnet18", encoder_weights=None, classes=5).eval()
    randomize_norms_(theirs)
    _copy_prefixed(theirs, ours, "encoder.model.", "encoder.model.trunk.")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
    ours.train()
    loss = torch.nn.functional.cross_entropy(ours(x), torch.randint(0, 5, (2, 64, 64)))
    loss.backward()
    assert all(p.grad is not None for p in ours.encoder.parameters())


def test_smp_with_a_variant_timm_lacks_and_frozen_stages() -> None:
    smp = pytest.importorskip("segmentation_models_pytorch")
    model = smp.DeepLabV3Plus(f"tu-{PREFIX}res2net50_26w_4s", encoder_weights=None, classes=3,
                              encoder_output_stride=8, frozen_stages=1, norm="FrozenBN", dcn_stages=[4])
    trunk = model.encoder.model.trunk
    assert trunk.feature_info[-1].stride == 8 and _has_dcn(trunk.layer4) and not _has_dcn(trunk.layer3)
    out = model(torch.randn(2, 3, 64, 64))
    out.mean().backward()
    frozen = [n for n, p in trunk.named_parameters() if n.startswith(("conv1", "bn1", "layer1."))]
    assert frozen and all(p.grad is None and not p.requires_grad for n, p in trunk.named_parameters() if n in frozen)
    assert trunk.layer2[0].conv1.weight.grad is not None


# ----------------------------------------------------------------------------- transformers


def _detr_config(backbone: str, **extra):
    from transformers import DetrConfig

    return DetrConfig(use_timm_backbone=True, backbone=backbone, use_pretrained_backbone=False, num_queries=8,
                      d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                      decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_labels=4, **extra)


def test_detr_on_our_trunk_equals_detr_on_timms_resnet_and_trains() -> None:
    pytest.importorskip("transformers")
    from transformers import DetrForObjectDetection

    torch.manual_seed(0)
    theirs = DetrForObjectDetection(_detr_config("resnet18")).eval()
    ours = DetrForObjectDetection(_detr_config(f"{PREFIX}resnet18")).eval()
    _copy_prefixed(theirs, ours, "model.backbone.model.", "model.backbone.model.trunk.")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = theirs(pixel_values=x), ours(pixel_values=x)
    torch.testing.assert_close(b.logits, a.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.pred_boxes, a.pred_boxes, rtol=1e-5, atol=1e-5)
    ours.train()
    labels = [{"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}] * 2
    out = ours(pixel_values=x, labels=labels)
    out.loss.backward()
    assert torch.isfinite(out.loss) and ours.model.backbone.model.trunk.layer4[0].conv1.weight.grad is not None


def test_detr_with_a_dilated_dcn_trunk() -> None:
    """DETR configs name a timm model but pass it no options (``backbone_kwargs`` makes transformers
    look the name up on the Hugging Face hub): a name registered with its options carries them."""
    pytest.importorskip("transformers")
    from transformers import DetrForObjectDetection

    from backbones.timm_models import register_timm_model

    name = register_timm_model("backbones_test_r2n50_dcn4", "res2net50_26w_4s", dcn_stages=[4])
    model = DetrForObjectDetection(_detr_config(name, dilation=True))
    trunk = model.model.backbone.model.trunk
    assert trunk.feature_info[-1].stride == 16 and _has_dcn(trunk.layer4) and not _has_dcn(trunk.layer3)
    out = model(pixel_values=torch.randn(1, 3, 64, 64))
    assert out.logits.shape == (1, 8, 5)
