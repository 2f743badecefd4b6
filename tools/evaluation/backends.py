"""COCO evaluation backends: pycocotools (reference) and faster-coco-eval (optional)."""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from typing import Any

BACKENDS = ("pycocotools", "faster_coco_eval")


@dataclass(frozen=True)
class CocoBackend:
    """The ``COCO`` and ``COCOeval`` classes of one implementation."""

    name: str
    coco_cls: type
    cocoeval_cls: type
    version: str

    def make_eval(self, coco_gt: Any, coco_dt: Any, iou_type: str) -> Any:
        """A COCOeval object over ``coco_gt``/``coco_dt`` with the standard parameters (its
        messages go to stdout, as pycocotools' do, so callers can capture both alike)."""
        if self.name == "faster_coco_eval":
            return self.cocoeval_cls(coco_gt, coco_dt, iou_type, print_function=print)
        return self.cocoeval_cls(coco_gt, coco_dt, iou_type)


def get_backend(name: str = "pycocotools") -> CocoBackend:
    """Resolve a backend by name; an unknown name or missing optional package is a clear error."""
    if name == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        return CocoBackend(name, COCO, COCOeval, importlib.metadata.version("pycocotools"))
    if name == "faster_coco_eval":
        try:
            from faster_coco_eval import COCO as FastCOCO
            from faster_coco_eval import COCOeval_faster
        except ImportError as exc:
            raise ImportError(
                "backend 'faster_coco_eval' needs the optional package faster-coco-eval "
                "(pip install 'resnet-family-backbones[fastcoco]')"
            ) from exc
        return CocoBackend(name, FastCOCO, COCOeval_faster,
                           importlib.metadata.version("faster-coco-eval"))
    raise ValueError(f"unknown COCO evaluation backend {name!r}; choose one of {BACKENDS}")
