"""Drawing ground truth and predictions: boxes, labels, scores and instance masks with
torchvision.utils, and semantic segmentation as image | ground truth | prediction panels in the
fixed class palette (:mod:`backbones_tools.data.palette`) with a legend."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from backbones_tools.data.categories import CategoryMap
from backbones_tools.data.palette import IGNORE, class_colour, colorize
from PIL import Image, ImageDraw, ImageFont
from pycocotools import mask as mask_utils
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

GT_COLOUR = (0, 220, 0)
PRED_COLOUR = (255, 40, 40)


def to_uint8_image(image: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``[3, H, W]`` float 0..1 / uint8 tensor, or ``[H, W, 3]`` uint8 array -> uint8 ``[3, H, W]``."""
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    if image.dtype != torch.uint8:
        image = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return image.cpu()


def draw_instances(
    image: torch.Tensor,
    boxes: torch.Tensor | None = None,
    masks: torch.Tensor | None = None,
    captions: Sequence[str] | None = None,
    colour: tuple[int, int, int] = GT_COLOUR,
    width: int = 2,
    alpha: float = 0.4,
) -> torch.Tensor:
    """Draw boolean masks ``[N, H, W]`` then xyxy boxes ``[N, 4]`` with captions on a uint8 image."""
    out = to_uint8_image(image)
    if masks is not None and len(masks):
        m = masks.bool()
        if m.ndim == 4:
            m = m[:, 0]
        out = draw_segmentation_masks(out, m.cpu(), alpha=alpha, colors=[colour] * len(m))
    if boxes is not None and len(boxes):
        out = draw_bounding_boxes(out, boxes.detach().float().cpu(),
                                  labels=list(captions) if captions else None,
                                  colors=[colour] * len(boxes), width=width)
    return out


def draw_gt_and_predictions(
    image: torch.Tensor | np.ndarray,
    category_map: CategoryMap,
    target: Mapping[str, Any] | None = None,
    prediction: Mapping[str, Any] | None = None,
    score_threshold: float = 0.5,
    mask_threshold: float = 0.5,
) -> torch.Tensor:
    """Ground truth in green and predictions (score >= threshold) in red on one uint8 image.

    ``target`` / ``prediction`` are torchvision-style dicts (``boxes`` xyxy, ``labels`` 1..K,
    optional ``masks``; predictions also ``scores``).
    """
    out = to_uint8_image(image)
    if target is not None:
        labels = target.get("labels", torch.zeros(0, dtype=torch.int64)).tolist()
        out = draw_instances(out, target.get("boxes"), target.get("masks"),
                             [category_map.name(lbl) for lbl in labels], GT_COLOUR)
    if prediction is not None:
        keep = prediction["scores"] >= score_threshold
        masks = prediction.get("masks")
        if masks is not None:
            masks = masks[keep]
            masks = masks if masks.dtype in (torch.bool, torch.uint8) else masks > mask_threshold
        captions = [f"{category_map.name(int(lbl))} {float(s):.2f}"
                    for lbl, s in zip(prediction["labels"][keep], prediction["scores"][keep])]
        out = draw_instances(out, prediction["boxes"][keep], masks, captions, PRED_COLOUR)
    return out


def coco_to_drawable(
    anns: Sequence[Mapping[str, Any]], category_map: CategoryMap, height: int, width: int,
    with_masks: bool = True,
) -> dict[str, torch.Tensor]:
    """COCO annotations or results (xywh boxes and/or polygon/RLE segmentations) -> drawable dict
    with ``boxes`` xyxy, ``labels``, ``scores`` (1 for ground truth) and ``masks`` if present."""
    boxes, labels, scores, masks = [], [], [], []
    for a in anns:
        seg = a.get("segmentation")
        rle = None
        if seg is not None and seg != []:
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width)) if isinstance(
                seg, list) else (mask_utils.frPyObjects(seg, height, width)
                                 if isinstance(seg.get("counts"), list) else seg)
        box = a.get("bbox")
        if box is None and rle is not None:
            box = mask_utils.toBbox(rle).tolist()
        x, y, w, h = box
        boxes.append([x, y, x + w, y + h])
        labels.append(category_map.label(a["category_id"]))
        scores.append(float(a.get("score", 1.0)))
        if with_masks and rle is not None:
            masks.append(mask_utils.decode(rle).astype(bool))
    out = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "scores": torch.tensor(scores, dtype=torch.float32),
    }
    if with_masks and masks and len(masks) == len(boxes):
        out["masks"] = torch.from_numpy(np.stack(masks))
    return out


def save_png(image: torch.Tensor, path: str | os.PathLike[str]) -> Path:
    """Write a uint8 ``[3, H, W]`` tensor as PNG (parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8_image(image).permute(1, 2, 0).numpy()).save(path)
    return path


# ----------------------------------------------------------------------------- semantic segmentation

#: hatching of ignored pixels: grey diagonal lines on the palette's ignore white
HATCH_COLOUR = (150, 150, 150)
PANEL_TITLES = ("image", "ground truth", "prediction")


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _text(draw: ImageDraw.ImageDraw, x: float, y_mid: float, text: str, font: ImageFont.ImageFont,
          centre: bool = False) -> None:
    """``text`` vertically centred on ``y_mid``, starting at ``x`` (or centred on it)."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x0 = x - (right - left) / 2 if centre else x
    draw.text((x0 - left, y_mid - (top + bottom) / 2), text, fill="black", font=font)


def hatch(rgb: np.ndarray, where: np.ndarray, step: int = 6) -> np.ndarray:
    """``rgb [H, W, 3]`` with ``where`` painted white with grey diagonal hatching (ignored pixels)."""
    out = rgb.copy()
    yy, xx = np.indices(where.shape)
    lines = (xx + yy) % step < max(step // 3, 1)
    out[where] = IGNORE
    out[where & lines] = HATCH_COLOUR
    return out


def _resize(array: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    """``size`` is (width, height); label maps nearest, pictures bilinear."""
    mode = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(array).resize(size, mode))


def segmentation_panels(image: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray,
                        prediction: torch.Tensor | np.ndarray, num_labels: int, ignore_index: int = 255,
                        side: int = 320) -> list[np.ndarray]:
    """``[image, ground truth, prediction]`` as ``uint8 [h, w, 3]`` panels scaled to a longer side
    of ``side`` pixels: the masks in the class palette (:func:`colorize`), the ground truth's
    ``ignore_index`` pixels hatched (:func:`hatch`)."""
    rgb = to_uint8_image(image).permute(1, 2, 0).numpy()
    h, w = rgb.shape[:2]
    scale = side / max(h, w)
    size = (max(round(w * scale), 1), max(round(h * scale), 1))
    maps = [_resize(np.asarray(m).astype(np.uint8), size, nearest=True) for m in (target, prediction)]
    gt, pred = (colorize(m, num_labels, ignore_index) for m in maps)
    return [_resize(rgb, size, nearest=False), hatch(gt, maps[0] == ignore_index), pred]


def _legend(names: Sequence[str], width: int, font: ImageFont.ImageFont, swatch: int) -> Image.Image:
    """Swatches with names (label order, then ``ignore``), wrapped to ``width`` pixels."""
    entries = [(name, class_colour(label)) for label, name in enumerate(names)] + [("ignore (not scored)", None)]
    pad, line = swatch // 2, swatch + swatch // 2
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    placed, x, y = [], pad, pad
    for name, colour in entries:
        item = swatch + pad // 2 + int(measure.textlength(name, font=font)) + 2 * pad
        if x > pad and x + item > width:
            x, y = pad, y + line
        placed.append((x, y, name, colour))
        x += item
    legend = Image.new("RGB", (width, y + line + pad), "white")
    draw = ImageDraw.Draw(legend)
    for x, y, name, colour in placed:
        if colour is None:
            box = hatch(np.zeros((swatch, swatch, 3), np.uint8), np.ones((swatch, swatch), bool), max(swatch // 3, 3))
            legend.paste(Image.fromarray(box), (x, y))
        else:
            draw.rectangle((x, y, x + swatch - 1, y + swatch - 1), fill=colour)
        draw.rectangle((x, y, x + swatch - 1, y + swatch - 1), outline=(90, 90, 90))
        _text(draw, x + swatch + pad // 2, y + swatch / 2, name, font)
    return legend


def draw_segmentation_comparison(
    samples: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], names: Sequence[str],
    ignore_index: int = 255, side: int = 320, gap: int = 6,
) -> torch.Tensor:
    """One picture of ``(image, target, prediction)`` samples: a row per sample with the image, the
    ground truth and the prediction side by side (:func:`segmentation_panels`), column titles on
    top and one legend of ``names`` (label order, ``background`` first) at the bottom; uint8
    ``[3, H, W]`` for :func:`save_png`."""
    rows = [segmentation_panels(*s, num_labels=len(names), ignore_index=ignore_index, side=side) for s in samples]
    size = max(side // 20, 11)
    font = _font(size)
    title_h = int(size * 1.8)
    panel_w = max(p.shape[1] for row in rows for p in row)
    width = gap + len(PANEL_TITLES) * (panel_w + gap)
    heights = [max(p.shape[0] for p in row) for row in rows]
    body = Image.new("RGB", (width, title_h + sum(h + gap for h in heights)), "white")
    draw = ImageDraw.Draw(body)
    for c, title in enumerate(PANEL_TITLES):
        _text(draw, gap + c * (panel_w + gap) + panel_w / 2, title_h / 2, title, font, centre=True)
    y = title_h
    for row, h in zip(rows, heights):
        for c, panel in enumerate(row):
            x = gap + c * (panel_w + gap)
            body.paste(Image.fromarray(panel), (x, y))
            draw.rectangle((x - 1, y - 1, x + panel.shape[1], y + panel.shape[0]), outline=(160, 160, 160))
        y += h + gap
    legend = _legend(names, width, font, swatch=size)
    out = Image.new("RGB", (width, body.height + legend.height), "white")
    out.paste(body, (0, 0))
    out.paste(legend, (0, body.height))
    return torch.from_numpy(np.asarray(out).copy()).permute(2, 0, 1)
