"""Build the benchmarked models (ours and peers) and a step function that runs one batch."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from backbones_tools.bench.config import ModelSpec, PeerSpec

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class _TorchvisionFeatures(nn.Module):
    """A torchvision ResNet-style classifier without its pooling and classifier (the trunk only)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        return m.layer4(m.layer3(m.layer2(m.layer1(x))))


class _TimmFeatures(nn.Module):
    """A timm classifier run through ``forward_features`` (the trunk only)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def build_ours(spec: ModelSpec) -> tuple[nn.Module, str]:
    """Our model for ``spec`` (random weights) and its kind."""
    options = dict(spec.options)
    if spec.type == "backbone":
        from backbones import create_backbone

        return create_backbone(spec.model, **options), "backbone"
    if spec.type == "fpn_backbone":
        from backbones import create_fpn_backbone

        return create_fpn_backbone(spec.model, **options), "fpn_backbone"
    if spec.type == "detector":
        from heads import build_detector

        options.setdefault("num_classes", 91)
        return build_detector(spec.model, backbone=spec.backbone, **options), "detector"
    from heads import build_segmenter

    options.setdefault("num_classes", 21)
    return build_segmenter(spec.model, backbone=spec.backbone, **options), "segmenter"


def build_peer(peer: PeerSpec) -> tuple[nn.Module, str]:
    """The reference model of ``peer`` (random weights, nothing downloaded) and its kind."""
    if peer.source == "timm":
        import timm

        return _TimmFeatures(timm.create_model(peer.name, pretrained=False, **peer.kwargs)), "backbone"
    import torchvision.models as tvm

    builder = tvm.get_model_builder(peer.name)
    module = builder.__module__
    kwargs = {"weights": None, **peer.kwargs}
    if ".detection." in module or ".segmentation." in module:
        kwargs.setdefault("weights_backbone", None)
        return builder(**kwargs), "detector" if ".detection." in module else "segmenter"
    return _TorchvisionFeatures(builder(**kwargs)), "backbone"


def share_weights(ours: nn.Module, kind: str, peer: nn.Module) -> None:
    """Copy the peer's weights into our model (they share the architecture and key names)."""
    if kind in ("detector", "segmenter"):
        from heads import load_torchvision_weights

        load_torchvision_weights(ours, peer.state_dict())
        return
    from backbones import load_weights

    inner = getattr(peer, "model", peer)
    load_weights(ours, inner.state_dict(), strict=False)


def make_inputs(kind: str, batch: int, size: int, device: torch.device, dtype: torch.dtype,
                memory_format: torch.memory_format, generator: torch.Generator) -> Any:
    """A batch for ``kind``: a list of images for detectors, an (N, 3, H, W) tensor otherwise."""
    images = torch.rand(batch, 3, size, size, generator=generator).to(device=device, dtype=dtype)
    if kind == "detector":
        return list(images)
    return images.contiguous(memory_format=memory_format)


def _detector_targets(batch: int, size: int, device: torch.device) -> list[dict[str, torch.Tensor]]:
    box = torch.tensor([[size * 0.2, size * 0.2, size * 0.7, size * 0.6]], device=device)
    return [{"boxes": box.clone(), "labels": torch.tensor([1], device=device)} for _ in range(batch)]


def _sum_outputs(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out.float().mean()
    if isinstance(out, dict):
        return sum(_sum_outputs(v) for v in out.values())
    return sum(_sum_outputs(v) for v in out)


def make_step(model: nn.Module, kind: str, inputs: Any, mode: str, size: int) -> Callable[[], Any]:
    """``step()`` runs one inference batch (under ``inference_mode``) or one training step
    (forward, backward, SGD update)."""
    if mode == "inference":

        def infer() -> Any:
            with torch.inference_mode():
                return model(inputs)

        return infer

    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    device = next(model.parameters()).device
    targets = _detector_targets(len(inputs), size, device) if kind == "detector" else None

    def train() -> Any:
        optimizer.zero_grad(set_to_none=True)
        out = model(inputs, targets) if targets is not None else model(inputs)
        loss = _sum_outputs(out)
        loss.backward()
        optimizer.step()
        return loss

    return train
