"""Build the benchmarked models (ours and peers) and a step function that runs one batch."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
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


def make_targets(kind: str, batch: int, size: int, device: torch.device) -> Any:
    """Training targets of a batch: one box per image (detectors), a mask with one object and an
    ignored band (segmenters, :func:`heads.segmentation_loss`), none for trunks."""
    if kind == "detector":
        box = torch.tensor([[size * 0.2, size * 0.2, size * 0.7, size * 0.6]], device=device)
        return [{"boxes": box.clone(), "labels": torch.tensor([1], device=device)} for _ in range(batch)]
    if kind == "segmenter":
        masks = torch.zeros(batch, size, size, dtype=torch.long, device=device)
        masks[:, int(size * 0.2):int(size * 0.6), int(size * 0.2):int(size * 0.7)] = 1
        masks[:, : max(1, size // 16)] = 255  # ignore_index, as crop padding is
        return masks
    return None


def _sum_outputs(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out.float().mean()
    if isinstance(out, dict):
        return sum(_sum_outputs(v) for v in out.values())
    return sum(_sum_outputs(v) for v in out)


#: Parameter-name prefixes of the trunk per kind (the training tool's ``Task.trunk_prefixes``).
TRUNK_PREFIXES = {"detector": ("backbone.body.",), "segmenter": ("backbone.",)}


def _autocast(amp: str, device: torch.device):
    """The training tool's autocast for a resolved ``amp`` (none, bf16, fp16)."""
    if amp == "none":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.float16 if amp == "fp16" else torch.bfloat16)


@dataclass
class Workload:
    """What is timed and what is checked: ``step()`` runs one inference batch or one training step;
    ``reference()`` gives the outputs compared across peers (inference: the model's outputs;
    training: the loss of the batch under a fixed seed, without updating the weights)."""

    step: Callable[[], Any]
    reference: Callable[[], Any]


def make_step(model: nn.Module, kind: str, inputs: Any, mode: str, size: int, *, amp: str = "none",
              seed: int = 0) -> Workload:
    """The workload of ``model`` on ``inputs``: inference under ``inference_mode``, or a training step
    as the training tool runs it (``Trainer._step``): forward under the ``amp`` autocast, the task's
    loss (detectors: the sum of their loss terms; segmenters: :func:`heads.segmentation_loss`; trunks:
    the mean of their maps), ``zero_grad``, backward, and the tool's default optimiser
    (:func:`backbones_tools.engine.optim.build_optimizer` with ``OptimConfig()``: SGD, momentum 0.9,
    weight decay 1e-4 off norms and biases, fused kernels), with a grad scaler for fp16 on CUDA."""
    if mode == "inference":

        def infer() -> Any:
            with torch.inference_mode():
                return model(inputs)

        return Workload(infer, infer)

    from backbones_tools.config.schema import OptimConfig
    from backbones_tools.engine.optim import build_optimizer

    device = next(model.parameters()).device
    batch = len(inputs)
    targets = make_targets(kind, batch, size, device)
    optimizer = build_optimizer(model, OptimConfig(), batch, TRUNK_PREFIXES.get(kind, ()))
    scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16" and device.type == "cuda")

    def loss() -> torch.Tensor:
        with _autocast(amp, device):
            if kind == "detector":
                return sum(model(inputs, targets).values())
            out = model(inputs)
            if kind == "segmenter":
                from heads import segmentation_loss

                return segmentation_loss(out, targets)["loss"]
            return _sum_outputs(out)

    def train() -> Any:
        total = loss()
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()
        return total

    def reference() -> torch.Tensor:
        torch.manual_seed(seed)  # the same sampling (R-CNN) and dropout masks (DeepLab) in every model
        with torch.no_grad():
            return loss().float()

    return Workload(train, reference)
