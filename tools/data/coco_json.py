"""Reading and validating COCO-format annotation files before pycocotools sees them.

pycocotools fails on bad input with bare ``KeyError``/``AssertionError`` or, worse, scores it
silently; these helpers turn every problem into a :class:`CocoFormatError` naming the file and id.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from backbones_tools.data.errors import CocoFormatError
from pycocotools.coco import COCO

PathLike = str | os.PathLike[str]


def read_json(path: PathLike) -> Any:
    """Load a JSON file; a missing file is a FileNotFoundError and bad JSON a CocoFormatError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation/results file not found: {path}")
    try:
        with path.open("r", encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise CocoFormatError(
            f"{path}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    except UnicodeDecodeError as exc:
        raise CocoFormatError(f"{path}: not UTF-8 text ({exc.reason})") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_coco_gt(
    data: Any, source: str = "<dict>", *, allow_annotation_id_zero: bool = True
) -> None:
    """Check the structure and cross references of a COCO ground-truth dict.

    Raises CocoFormatError for: missing top-level lists, duplicate or non-integer ids, an
    annotation whose ``image_id`` is not an image, whose ``category_id`` is not a category, or a
    malformed ``bbox``; and for annotation id 0 when ``allow_annotation_id_zero`` is False
    (COCOeval uses 0 as "unmatched", so such a ground truth would be mis-scored).
    """
    if not isinstance(data, Mapping):
        raise CocoFormatError(f"{source}: top level must be an object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise CocoFormatError(f"{source}: missing top-level key {key!r}")
        if not isinstance(data[key], list):
            raise CocoFormatError(f"{source}: {key!r} must be a list")

    image_ids: set[int] = set()
    for i, img in enumerate(data["images"]):
        if not isinstance(img, Mapping) or not _is_int(img.get("id")):
            raise CocoFormatError(f"{source}: images[{i}] has no integer 'id'")
        if img["id"] in image_ids:
            raise CocoFormatError(f"{source}: duplicate image id {img['id']}")
        image_ids.add(img["id"])

    category_ids: set[int] = set()
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, Mapping) or not _is_int(cat.get("id")):
            raise CocoFormatError(f"{source}: categories[{i}] has no integer 'id'")
        if cat["id"] in category_ids:
            raise CocoFormatError(f"{source}: duplicate category id {cat['id']}")
        category_ids.add(cat["id"])

    ann_ids: set[int] = set()
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, Mapping) or not _is_int(ann.get("id")):
            raise CocoFormatError(f"{source}: annotations[{i}] has no integer 'id'")
        aid = ann["id"]
        if aid in ann_ids:
            raise CocoFormatError(f"{source}: duplicate annotation id {aid}")
        ann_ids.add(aid)
        if aid == 0 and not allow_annotation_id_zero:
            raise CocoFormatError(
                f"{source}: annotation id 0 found; COCOeval treats id 0 as 'unmatched' and would "
                "mis-score it. Renumber annotation ids from 1."
            )
        if ann.get("image_id") not in image_ids:
            raise CocoFormatError(
                f"{source}: annotation {aid} references image id {ann.get('image_id')!r}, "
                "which is not in 'images'"
            )
        if ann.get("category_id") not in category_ids:
            raise CocoFormatError(
                f"{source}: annotation {aid} has category id {ann.get('category_id')!r}, "
                f"which is not in 'categories' {sorted(category_ids)}"
            )
        bbox = ann.get("bbox")
        if bbox is not None and (
            not isinstance(bbox, list | tuple)
            or len(bbox) != 4
            or not all(isinstance(v, int | float) and math.isfinite(v) for v in bbox)
        ):
            raise CocoFormatError(f"{source}: annotation {aid} has malformed bbox {bbox!r}")


def coco_from_dict(data: Mapping[str, Any], coco_cls: type = COCO) -> Any:
    """Build a ``COCO`` object (pycocotools or compatible class) from a dict, without printing."""
    coco = coco_cls()
    coco.dataset = dict(data)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def load_coco_gt(
    source: PathLike | Mapping[str, Any], *, allow_annotation_id_zero: bool = True
) -> COCO:
    """Read (if a path), validate and index a COCO ground truth as a ``pycocotools.COCO``."""
    if isinstance(source, Mapping):
        data, name = source, "<dict>"
    else:
        data, name = read_json(source), str(source)
    validate_coco_gt(data, name, allow_annotation_id_zero=allow_annotation_id_zero)
    return coco_from_dict(data)
