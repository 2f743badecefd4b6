"""Task adapters: what differs between detection and segmentation training.

A task builds its datasets and model from a config, turns a batch into a dict of loss terms,
evaluates a model on a loader (COCOeval / mIoU, gathered over ranks) and draws predictions.
The training loop (:mod:`backbones_tools.engine.trainer`) knows nothing else about the task.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision.utils import make_grid
from tqdm import tqdm

from backbones_tools.config.loader import ConfigError
from backbones_tools.config.schema import TrainConfig
from backbones_tools.data import (
    CategoryMap,
    CocoDetection,
    CocoSemantic,
    build_detection_transforms,
    build_segmentation_transforms,
    collate_detection,
    collate_segmentation,
)
from backbones_tools.data.draw import draw_gt_and_predictions, save_png
from backbones_tools.data.errors import DatasetError
from backbones_tools.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from backbones_tools.distributed import DistContext
from backbones_tools.engine.data import split_paths, subset_ids
from backbones_tools.evaluation import CocoEvaluator, SegmentationMetrics, format_table
from heads import build_detector, build_segmenter, counts_background, segmentation_loss

COCO_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


@contextmanager
def _model_options_named() -> Iterator[None]:
    """A builder's refusal of a configured option (``model.options``, ``model.backbone``) is a
    config error (exit code 2, no traceback), not a bug."""
    try:
        yield
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"model: {exc} (check model.options and model.backbone)") from None


def _semantic_dataset(*args: Any, **kwargs: Any) -> CocoSemantic:
    """:class:`CocoSemantic`, its refusal of ``ignore_index`` named as the config key that set it."""
    try:
        return CocoSemantic(*args, **kwargs)
    except ValueError as exc:
        if "ignore_index" in str(exc):
            raise ConfigError(f"model.ignore_index: {exc}") from None
        raise


def _check_num_classes(cfg: TrainConfig, category_map: CategoryMap) -> int:
    if cfg.model.num_classes is not None and cfg.model.num_classes != category_map.num_classes:
        raise ConfigError(
            f"model.num_classes={cfg.model.num_classes} but the dataset's category map has "
            f"{category_map.num_classes} classes ({', '.join(category_map.names)}); set "
            "model.num_classes to null to take them from the dataset"
        )
    return category_map.num_classes


class Task:
    """Interface of a task adapter (see the module docstring)."""

    name = "task"
    #: what the preflight checks annotations for ("segm": masks are read too)
    check_iou_type = "bbox"
    #: parameter-name prefixes of the pretrained trunk (for ``optim.backbone_lr_mult``)
    trunk_prefixes: tuple[str, ...] = ("backbone.",)

    def __init__(self, cfg: TrainConfig, root: Path) -> None:
        self.cfg = cfg
        self.root = root
        self.category_map: CategoryMap | None = None
        #: per split, what the preflight left out (data.skip_invalid)
        self.exclusions: dict[str, Any] = {}

    def _data_policy(self, split: str) -> dict[str, Any]:
        """Dataset arguments for ``split``: records the preflight left out, and whether a file
        that became unreadable since is skipped (``data.skip_invalid``) or stops the run."""
        ex = self.exclusions.get(split)
        return {"skip_unreadable": self.cfg.data.skip_invalid,
                "skip_image_ids": ex.image_ids if ex else (),
                "skip_annotation_ids": ex.annotation_ids if ex else ()}

    def build_datasets(self, train: bool = True, val: bool = True,
                       category_map: CategoryMap | None = None) -> tuple[Any, Any]:
        """Training and validation datasets (None where not asked for). Labels follow
        ``category_map`` when given (a checkpoint's), else ``data.categories`` of the val split."""
        raise NotImplementedError

    def build_model(self, num_classes: int) -> nn.Module:
        """The configured model with freshly initialised weights (see :meth:`trunk`)."""
        raise NotImplementedError

    def trunk(self, model: nn.Module) -> nn.Module:
        """The ResNet trunk inside ``model`` (what ``model.backbone.weights`` initialises)."""
        raise NotImplementedError

    collate = staticmethod(collate_detection)

    def aspect_ratios(self, dataset: Any) -> list[float] | None:
        return None

    def loss_terms(self, model: nn.Module, batch: Any,
                   device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(total, terms)``: the loss to optimise and the named terms to log."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, loader: DataLoader, ctx: DistContext) -> tuple[dict[str, float], str]:
        raise NotImplementedError

    def draw(self, model: nn.Module, dataset: Any, path: Path, device: torch.device) -> Path | None:
        raise NotImplementedError


# ----------------------------------------------------------------------------- detection


class DetectionTask(Task):
    """torchvision detectors (Faster / Mask R-CNN, RetinaNet, FCOS) on COCO-layout data."""

    name = "det"
    trunk_prefixes = ("backbone.body.",)

    @property
    def masks(self) -> bool:
        return self.cfg.model.kind == "mask_rcnn"

    @property
    def iou_types(self) -> tuple[str, ...]:
        return ("bbox", "segm") if self.masks else ("bbox",)

    @property
    def check_iou_type(self) -> str:
        return "segm" if self.masks else "bbox"

    @property
    def label_offset(self) -> int:
        """RetinaNet/FCOS take labels 0..K-1 (no background); the datasets give 1..K."""
        return 0 if counts_background(self.cfg.model.kind) else 1

    def build_datasets(self, train: bool = True, val: bool = True,
                       category_map: CategoryMap | None = None) -> tuple[Any, Any]:
        d = self.cfg.data
        train_ds = val_ds = None
        if val:
            paths = split_paths(self.root, d.val_split)
            val_ds = CocoDetection(paths.images, paths.annotations, build_detection_transforms(False),
                                   return_masks=self.masks, categories=d.categories,
                                   category_map=category_map, **self._data_policy(d.val_split))
            category_map = self.category_map = val_ds.category_map
            subset_ids(val_ds, d.max_val_images)
        if train:
            paths = split_paths(self.root, d.train_split)
            aug = d.det_aug
            transforms = build_detection_transforms(
                True, min_sizes=aug.min_sizes, max_size=aug.max_size, flip_prob=aug.flip_prob,
                photometric=aug.photometric,
            )
            train_ds = CocoDetection(paths.images, paths.annotations, transforms, return_masks=self.masks,
                                     categories=d.categories, category_map=category_map, skip_empty=True,
                                     **self._data_policy(d.train_split))
            self.category_map = train_ds.category_map
            subset_ids(train_ds, d.max_train_images)
            if len(train_ds) == 0:
                raise DatasetError(f"no training image with annotations in {paths.annotations}")
        return train_ds, val_ds

    def build_model(self, num_classes: int) -> nn.Module:
        return build_detection_model(self.cfg, num_classes)

    def trunk(self, model: nn.Module) -> nn.Module:
        return model.backbone.body

    def aspect_ratios(self, dataset: Any) -> list[float] | None:
        return dataset.aspect_ratios()

    def _targets(self, targets: Sequence[Mapping[str, Any]], device: torch.device) -> list[dict[str, Any]]:
        keys = ("boxes", "labels", "masks")
        out = []
        for t in targets:
            d = {k: t[k].to(device) for k in keys if k in t}
            if self.label_offset:
                d["labels"] = d["labels"] - self.label_offset
            out.append(d)
        return out

    def loss_terms(self, model: nn.Module, batch: Any,
                   device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """torchvision's detectors return their loss terms; the total is their sum, as in its
        reference training script."""
        images, targets = batch
        terms = model([img.to(device) for img in images], self._targets(targets, device))
        return sum(terms.values()), terms

    @torch.no_grad()
    def predict(self, model: nn.Module, images: Sequence[torch.Tensor], device: torch.device) -> list[dict[str, Any]]:
        """Detector outputs on CPU with dataset labels (1..K)."""
        outputs = model([img.to(device) for img in images])
        result = []
        for o in outputs:
            o = {k: v.detach().cpu() for k, v in o.items()}
            if self.label_offset:
                o["labels"] = o["labels"] + self.label_offset
            result.append(o)
        return result

    def evaluate(self, model: nn.Module, loader: DataLoader, ctx: DistContext) -> tuple[dict[str, float], str]:
        dataset = loader.dataset
        gt = restrict_gt(dataset.coco.dataset, dataset.ids, self.category_map.category_ids,
                         dataset.skipped_annotation_ids)
        evaluator = CocoEvaluator(gt, self.iou_types, category_map=self.category_map,
                                  backend=self.cfg.eval.backend)
        model.eval()
        for images, targets in tqdm(loader, desc="eval", disable=not ctx.is_main, leave=False,
                                    dynamic_ncols=True):
            evaluator.add_batch(targets, self.predict(model, images, ctx.device))
        results = evaluator.evaluate()
        metrics: dict[str, float] = {}
        tables = []
        for iou_type, res in results.items():
            for name, value in zip(COCO_STATS, res.stats):
                metrics[f"{iou_type}/{name}"] = value
            for row in res.per_category:
                metrics[f"{iou_type}/AP-{row['name']}"] = row["AP"]
            tables.append(format_table(res))
        return _with_left_out(dataset, metrics, "\n".join(tables))

    def draw(self, model: nn.Module, dataset: Any, path: Path, device: torch.device) -> Path | None:
        n = min(self.cfg.eval.visualize, len(dataset))
        if n == 0:
            return None
        model.eval()
        tiles = []
        for i in range(n):
            image, target = dataset[i]
            pred = self.predict(model, [image], device)[0]
            tiles.append(draw_gt_and_predictions(image, self.category_map, target, pred,
                                                 score_threshold=self.cfg.eval.score_thresh))
        return save_png(_grid(tiles), path)


def _with_left_out(dataset: Any, metrics: dict[str, float], table: str) -> tuple[dict[str, float], str]:
    """Say how many ground-truth images ``data.skip_invalid`` left out of the score (never silent)."""
    left_out = len(getattr(dataset, "skipped_image_ids", ()))
    if not left_out:
        return metrics, table
    metrics = {**metrics, "eval/images_left_out": left_out}
    return metrics, f"{table}\n({left_out} unreadable val images left out of the score: data.skip_invalid)"


def restrict_gt(gt: Mapping[str, Any], image_ids: Sequence[int], category_ids: Sequence[int],
                skipped_annotation_ids: Collection[int] = ()) -> dict[str, Any]:
    """The ground truth that is scored: the dataset's images (all of them unless
    ``data.max_val_images`` cut the list or ``data.skip_invalid`` left faulty ones out) and the
    categories the model was trained on; other categories' objects are neither scored nor listed,
    as they were not targets, and nor are annotations the preflight found faulty."""
    images, cats = set(image_ids), set(category_ids)
    return {**gt, "images": [i for i in gt["images"] if i["id"] in images],
            "annotations": [a for a in gt["annotations"]
                            if a["image_id"] in images and a["category_id"] in cats
                            and a["id"] not in skipped_annotation_ids],
            "categories": [c for c in gt["categories"] if c["id"] in cats]}


def _grid(tiles: list[torch.Tensor]) -> torch.Tensor:
    h = max(t.shape[1] for t in tiles)
    w = max(t.shape[2] for t in tiles)
    padded = [torch.nn.functional.pad(t, (0, w - t.shape[2], 0, h - t.shape[1]), value=255) for t in tiles]
    return make_grid(padded, nrow=min(4, len(padded)), padding=4, pad_value=255)


def build_detection_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """The configured torchvision detector for ``num_classes`` foreground classes."""
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

    m = cfg.model
    # trunk weights (model.backbone.weights) are loaded by the trainer, with a report
    backbone_options: dict[str, Any] = {**m.backbone.create_options(), "fpn_channels": m.fpn.out_channels}
    if m.fpn.norm is not None:
        backbone_options["fpn_norm"] = m.fpn.norm
    # R-CNN: + background; RetinaNet/FCOS: labels shifted to 0..K-1
    head_classes = num_classes + 1 if counts_background(m.kind) else num_classes
    options = dict(m.options)
    if m.box_head_dim is not None:
        if not counts_background(m.kind):
            raise ConfigError(f"model.box_head_dim applies to the R-CNNs, not {m.kind}")
        pool = 7
        options["box_head"] = TwoMLPHead(m.fpn.out_channels * pool * pool, m.box_head_dim)
        options["box_predictor"] = FastRCNNPredictor(m.box_head_dim, head_classes)
        if m.kind == "mask_rcnn":
            raise ConfigError("model.box_head_dim with mask_rcnn needs a mask_predictor; use options")
    with _model_options_named():
        return build_detector(m.kind, backbone=m.backbone.name, num_classes=head_classes,
                              backbone_options=backbone_options, **options)


# ----------------------------------------------------------------------------- segmentation


class SegmentationTask(Task):
    """DeepLabV3 / V3+ semantic segmentation on COCO-layout data (masks from instances)."""

    name = "seg"
    trunk_prefixes = ("backbone.",)
    check_iou_type = "segm"

    @property
    def collate(self):
        """Batches padded with the configured ``model.ignore_index``."""
        return partial(collate_segmentation, ignore_index=self.cfg.model.ignore_index)

    def build_datasets(self, train: bool = True, val: bool = True,
                       category_map: CategoryMap | None = None) -> tuple[Any, Any]:
        d = self.cfg.data
        aug = d.seg_aug
        ignore = self.cfg.model.ignore_index
        labels = dict(categories=d.categories, ignore_index=ignore)
        train_ds = val_ds = None
        if val:
            paths = split_paths(self.root, d.val_split)
            val_ds = _semantic_dataset(paths.images, paths.annotations,
                                  build_segmentation_transforms(False, eval_size=aug.eval_size),
                                  category_map=category_map, **labels, **self._data_policy(d.val_split))
            category_map = self.category_map = val_ds.category_map
            subset_ids(val_ds, d.max_val_images)
        if train:
            paths = split_paths(self.root, d.train_split)
            transforms = build_segmentation_transforms(
                True, base_size=aug.base_size, crop_size=aug.crop_size,
                scale_range=tuple(aug.scale_range), flip_prob=aug.flip_prob, photometric=aug.photometric,
                ignore_index=ignore,
            )
            train_ds = _semantic_dataset(paths.images, paths.annotations, transforms, category_map=category_map,
                                    skip_empty=True, **labels, **self._data_policy(d.train_split))
            self.category_map = train_ds.category_map
            subset_ids(train_ds, d.max_train_images)
            if len(train_ds) == 0:
                raise DatasetError(f"no training image with labelled pixels in {paths.annotations}")
        return train_ds, val_ds

    def build_model(self, num_classes: int) -> nn.Module:
        return build_segmentation_model(self.cfg, num_classes)

    def trunk(self, model: nn.Module) -> nn.Module:
        return model.backbone

    def loss_terms(self, model: nn.Module, batch: Any,
                   device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The total of :func:`heads.segmentation_loss` (``loss_out + aux_weight * loss_aux``)
        and its terms."""
        images, masks = batch
        out = model(images.to(device))
        m = self.cfg.model
        losses = segmentation_loss(out, masks.to(device), ignore_index=m.ignore_index,
                                   aux_weight=m.aux_weight, class_balance=m.class_balance)
        total = losses.pop("loss")
        return total, losses

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, ctx: DistContext) -> tuple[dict[str, float], str]:
        num_classes = self.category_map.num_classes + 1
        metrics = SegmentationMetrics(num_classes, ignore_index=self.cfg.model.ignore_index)
        model.eval()
        for images, masks in tqdm(loader, desc="eval", disable=not ctx.is_main, leave=False,
                                  dynamic_ncols=True):
            logits = model(images.to(ctx.device))["out"]
            metrics.update(logits.argmax(1).cpu(), masks)
        metrics.all_reduce()
        res = metrics.compute()
        names = ["background", *self.category_map.names]
        out = {"seg/mIoU": res["mIoU"], "seg/pixel_acc": res["pixel_accuracy"]}
        lines = [f"[seg] mIoU={res['mIoU'] * 100:.2f}  pixel_acc={res['pixel_accuracy'] * 100:.2f}"]
        for name, iou in zip(names, res["per_class_iou"]):
            out[f"seg/IoU-{name}"] = iou
            lines.append(f"{name:<12} IoU {iou * 100:6.2f}" if not math.isnan(iou) else f"{name:<12} IoU    n/a")
        return _with_left_out(loader.dataset, out, "\n".join(lines))

    @torch.no_grad()
    def draw(self, model: nn.Module, dataset: Any, path: Path, device: torch.device) -> Path | None:
        """The first ``eval.visualize`` val images, each as image | ground truth | prediction in
        the fixed class palette (ignored pixels hatched), with a legend of the class names."""
        from backbones_tools.data.draw import draw_segmentation_comparison

        n = min(self.cfg.eval.visualize, len(dataset))
        if n == 0:
            return None
        model.eval()
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        samples = []
        for i in range(n):
            image, mask = dataset[i]
            pred = model(image[None].to(device))["out"].argmax(1)[0].cpu()
            samples.append(((image * std + mean).clamp(0, 1), mask, pred))
        names = ["background", *self.category_map.names]
        return save_png(draw_segmentation_comparison(samples, names, self.cfg.model.ignore_index), path)


def build_segmentation_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """The configured DeepLab model for ``num_classes`` foreground classes (+ background);
    the trunk's ``model.backbone.weights`` are loaded by the trainer, with a report."""
    m = cfg.model
    options = {k: v for k, v in m.backbone.create_options().items() if k != "output_stride"}
    if m.backbone.output_stride not in (None, m.output_stride):
        raise ConfigError(
            f"model.backbone.output_stride={m.backbone.output_stride} differs from "
            f"model.output_stride={m.output_stride}; set only model.output_stride for DeepLab"
        )
    with _model_options_named():
        return build_segmenter(m.kind, backbone=m.backbone.name, num_classes=num_classes + 1,
                               output_stride=m.output_stride, aux=m.aux, **options, **m.options)


def make_task(cfg: TrainConfig, root: Path) -> Task:
    """The adapter of ``cfg.task``."""
    return DetectionTask(cfg, root) if cfg.task == "det" else SegmentationTask(cfg, root)
