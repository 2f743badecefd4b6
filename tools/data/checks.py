"""Preflight checks of a COCO-layout dataset: annotation consistency and image files.

``check_split(root, split)`` reads ``<root>/annotations/instances_<split>.json`` and the images
under ``<root>/<split>/`` and returns a :class:`SplitReport`: every problem found, grouped by
kind, each group with a severity, a count and the first few examples (ids, file names, values),
plus per-category annotation counts and COCO object-size histograms. ``check_dataset`` does the
same for several splits. ``report.ok`` is False when any error was found; warnings and info do
not make a dataset unusable.

Speed (COCO train2017: 118k images, 860k annotations): fields are pulled out of the parsed JSON
with one list comprehension each and every check runs on numpy arrays; polygons and compressed
RLE strings are decoded in one vectorised pass over all of them. Checking the image files is the
costly part, so by default only headers are read (``full=True`` decodes every image), on a
thread pool.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from backbones_tools.data.coco_json import read_json
from backbones_tools.data.errors import CocoFormatError
from PIL import Image

PathLike = str | os.PathLike[str]
Log = Callable[[str], None]

ERROR, WARNING, INFO = "error", "warning", "info"
SEVERITY_ORDER = (ERROR, WARNING, INFO)
MAX_EXAMPLES = 5
BOX_TOLERANCE = 1.0  # px a box or polygon may stick out of the image (rounding in exporters)
SMALL_AREA, MEDIUM_AREA = 32.0**2, 96.0**2  # COCOeval's areaRng boundaries
SIZE_NAMES = ("small", "medium", "large")

# Problem groups: code -> (default severity, title). The segmentation groups are errors for
# ``iou_type="segm"`` and warnings for ``"bbox"`` (a bbox model never reads masks).
PROBLEMS: dict[str, tuple[str, str]] = {
    "malformed_json": (ERROR, "annotation file is not valid JSON"),
    "invalid_structure": (ERROR, "annotation file lacks the COCO structure"),
    "missing_field": (ERROR, "records missing a required field"),
    "invalid_field": (ERROR, "fields with a wrong type or value"),
    "no_images": (ERROR, "split lists no images"),
    "duplicate_image_id": (ERROR, "duplicate image ids"),
    "duplicate_annotation_id": (ERROR, "duplicate annotation ids"),
    "duplicate_category_id": (ERROR, "duplicate category ids"),
    "unknown_image_id": (ERROR, "annotations whose image_id is not an image"),
    "unknown_category_id": (ERROR, "annotations whose category_id is not a category"),
    "non_finite": (ERROR, "non-finite numbers (NaN/Infinity) in bbox, area or segmentation"),
    "non_positive_box": (ERROR, "boxes with width or height <= 0"),
    "box_outside_image": (ERROR, f"boxes outside the image (by more than {BOX_TOLERANCE:g} px)"),
    "invalid_polygon": (ERROR, "invalid polygon segmentations"),
    "invalid_rle": (ERROR, "invalid RLE segmentations"),
    "missing_image_dir": (ERROR, "image folder missing"),
    "missing_image_file": (ERROR, "image files missing"),
    "unreadable_image": (ERROR, "image files that cannot be decoded"),
    "truncated_image": (ERROR, "truncated image files"),
    "image_size_mismatch": (ERROR, "images whose decoded size differs from the JSON width/height"),
    "duplicate_file_name": (WARNING, "images sharing one file name"),
    "missing_area": (WARNING, "annotations without 'area' (COCOeval needs it for size ranges)"),
    "image_without_annotations": (WARNING, "images without annotations"),
    "crowd": (INFO, "crowd annotations (iscrowd=1: not training targets, ignore regions in eval)"),
}


#: Error groups whose records can be left out of a run (``data.skip_invalid``): image files, and
#: annotations of a known image. The other errors (structure, duplicate ids) make a split unusable.
SKIPPABLE_IMAGE_ERRORS = ("missing_image_file", "unreadable_image", "truncated_image", "image_size_mismatch")
SKIPPABLE_ANNOTATION_ERRORS = ("unknown_image_id", "unknown_category_id", "non_finite", "non_positive_box",
                               "box_outside_image", "invalid_polygon", "invalid_rle")


class DatasetNotFoundError(FileNotFoundError):
    """The data root or a split's annotation file does not exist (a usage error, not a finding)."""


# ----------------------------------------------------------------------------- report


@dataclass
class Finding:
    """One problem group: how many records have it and the first few of them."""

    code: str
    severity: str
    title: str
    count: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {"code": self.code, "severity": self.severity, "title": self.title,
                "count": self.count, "examples": self.examples}


@dataclass
class SplitReport:
    """Everything found in one split, with its statistics."""

    split: str
    annotation_file: str
    image_dir: str
    iou_type: str = "bbox"
    full: bool = False
    num_images: int = 0
    num_annotations: int = 0
    num_crowd: int = 0
    categories: list[dict[str, Any]] = field(default_factory=list)
    area_histogram: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SIZE_NAMES, 0))
    findings: dict[str, Finding] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    #: ids of every image / annotation with a skippable error (see :meth:`skippable`)
    bad_image_ids: set[Any] = field(default_factory=set)
    bad_annotation_ids: set[Any] = field(default_factory=set)
    unskippable: int = 0

    def flag(self, code: str, rows: Sequence[int] | np.ndarray, example: Callable[[int], dict],
             severity: str | None = None) -> None:
        """Record ``len(rows)`` occurrences of ``code``; ``example(row)`` is only built for the
        first :data:`MAX_EXAMPLES` of the group."""
        if len(rows) == 0:
            return
        default, title = PROBLEMS[code]
        found = self.findings.setdefault(code, Finding(code, severity or default, title))
        found.count += len(rows)
        for row in rows[: MAX_EXAMPLES - len(found.examples)]:
            found.examples.append(_json_safe(example(int(row))))
        if found.severity == ERROR:
            self._collect_bad_ids(code, rows, example)

    def _collect_bad_ids(self, code: str, rows: Sequence[int] | np.ndarray, example: Callable[[int], dict]) -> None:
        """Remember which image / annotation each error row belongs to (all rows, not only the
        examples), so that a run can leave exactly those out."""
        for row in rows:
            ex = example(int(row))
            section = ex.get("section")
            if code in SKIPPABLE_IMAGE_ERRORS or (code.endswith("_field") and section == "images"):
                target = self.bad_image_ids
            elif code in SKIPPABLE_ANNOTATION_ERRORS or (code.endswith("_field") and section == "annotations"):
                target = self.bad_annotation_ids
            else:
                self.unskippable += 1
                continue
            if ex.get("id") is None:
                self.unskippable += 1
            else:
                target.add(ex["id"])

    @property
    def skippable(self) -> bool:
        """True when every error belongs to an image or annotation that can be left out."""
        return self.unskippable == 0

    @property
    def num_errors(self) -> int:
        """Records with an error (summed over the error groups)."""
        return sum(f.count for f in self.findings.values() if f.severity == ERROR)

    @property
    def num_warnings(self) -> int:
        """Records with a warning (summed over the warning groups)."""
        return sum(f.count for f in self.findings.values() if f.severity == WARNING)

    @property
    def ok(self) -> bool:
        """True when nothing of severity error was found."""
        return self.num_errors == 0

    def sorted_findings(self) -> list[Finding]:
        """Findings, errors first, then warnings, then info, each in the order found."""
        return sorted(self.findings.values(), key=lambda f: SEVERITY_ORDER.index(f.severity))

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form of the report."""
        return {
            "split": self.split, "ok": self.ok, "annotation_file": self.annotation_file,
            "image_dir": self.image_dir, "iou_type": self.iou_type, "full": self.full,
            "num_images": self.num_images, "num_annotations": self.num_annotations,
            "num_crowd": self.num_crowd, "num_errors": self.num_errors,
            "num_warnings": self.num_warnings, "bad_image_ids": len(self.bad_image_ids),
            "bad_annotation_ids": len(self.bad_annotation_ids),
            "findings": [f.to_dict() for f in self.sorted_findings()],
            "categories": self.categories, "area_histogram": self.area_histogram,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }

    def format(self) -> str:
        """Readable multi-line text report."""
        status = "OK" if self.ok else f"FAILED ({self.num_errors} errors)"
        lines = [
            f"== {self.split}: {status}",
            f"   {self.num_images} images, {self.num_annotations} annotations "
            f"({self.num_crowd} crowd), {len(self.categories)} categories",
            f"   annotations: {self.annotation_file}",
            f"   images:      {self.image_dir} "
            f"({'fully decoded' if self.full else 'headers and file ends'})",
        ]
        for f in self.sorted_findings():
            lines.append(f"   {f.severity.upper():<8}{f.title}: {f.count}")
            lines.extend(f"             {_format_example(e)}" for e in f.examples)
            if f.count > len(f.examples):
                lines.append(f"             ... and {f.count - len(f.examples)} more")
        if self.categories:
            counts = [f"{c['name']}({c['id']})={c['annotations']}"
                      + (f"+{c['crowd']}crowd" if c["crowd"] else "") for c in self.categories]
            lines.append("   annotations per category (non-crowd):")
            lines.extend(_wrap(counts, indent="     "))
        total = sum(self.area_histogram.get(k, 0) for k in SIZE_NAMES)
        if total:
            sizes = "  ".join(f"{k} {self.area_histogram[k]} ({100.0 * self.area_histogram[k] / total:.1f}%)"
                              for k in SIZE_NAMES)
            lines.append(f"   object sizes by area (non-crowd): {sizes}")
        if self.seconds:
            lines.append("   time: " + ", ".join(f"{k} {v:.2f} s" for k, v in self.seconds.items()))
        return "\n".join(lines)


@dataclass
class DatasetReport:
    """The reports of several splits of one data root."""

    root: str
    splits: list[SplitReport]

    @property
    def ok(self) -> bool:
        """True when no split has an error."""
        return all(s.ok for s in self.splits)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form of the report."""
        return {"root": self.root, "ok": self.ok, "splits": [s.to_dict() for s in self.splits]}

    def format(self) -> str:
        """Readable text report ending in a one-line verdict."""
        parts = [f"Dataset check of {self.root}"] + [s.format() for s in self.splits]
        errors = sum(s.num_errors for s in self.splits)
        warnings = sum(s.num_warnings for s in self.splits)
        if self.ok:
            verdict = f"RESULT: OK - no errors ({warnings} warnings); the dataset is usable"
        else:
            bad = ", ".join(s.split for s in self.splits if not s.ok)
            verdict = f"RESULT: FAILED - {errors} errors in {bad} ({warnings} warnings)"
        return "\n".join(parts + [verdict])


def _json_safe(value: Any) -> Any:
    """Example values as strict JSON: NaN/Infinity become strings, long values are cut."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        if len(value) > 12:
            return [_json_safe(v) for v in value[:12]] + [f"... ({len(value)} items)"]
        return [_json_safe(v) for v in value]
    if isinstance(value, str) and len(value) > 200:
        return value[:200] + "..."
    return value


def _format_example(example: dict[str, Any]) -> str:
    return " ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in example.items())


def _wrap(items: list[str], indent: str, width: int = 100) -> list[str]:
    lines, line = [], indent
    for item in items:
        if len(line) + len(item) > width and line.strip():
            lines.append(line.rstrip())
            line = indent
        line += item + "  "
    if line.strip():
        lines.append(line.rstrip())
    return lines


# ----------------------------------------------------------------------------- columns


def _uniform_array(values: list[Any], kinds: str) -> np.ndarray | None:
    """``np.array(values)`` when it is one-dimensional of a dtype kind in ``kinds`` (the fast
    path: every value valid), else None."""
    if not values:
        return None
    try:
        arr = np.array(values)
    except (ValueError, OverflowError, TypeError):
        return None
    return arr if arr.ndim == 1 and arr.dtype.kind in kinds else None


def _as_int64(values: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """``values`` as int64 and a mask of the valid ones (Python ints; not bool, float or str)."""
    n = len(values)
    arr = _uniform_array(values, "i")
    if arr is not None:
        return arr.astype(np.int64, copy=False), np.ones(n, dtype=bool)
    ok = np.fromiter((type(v) is int and -(2**63) <= v < 2**63 for v in values), bool, count=n)
    return np.fromiter((v if k else 0 for v, k in zip(values, ok)), np.int64, count=n), ok


def _as_float64(values: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """``values`` as float64 (NaN where invalid) and a mask of the numbers (int or float)."""
    n = len(values)
    arr = _uniform_array(values, "iuf")
    if arr is not None:
        return arr.astype(np.float64, copy=False), np.ones(n, dtype=bool)
    ok = np.fromiter((type(v) in (int, float) for v in values), bool, count=n)
    return np.fromiter((float(v) if k else math.nan for v, k in zip(values, ok)), np.float64, count=n), ok


def _is_box(value: Any) -> bool:
    return (type(value) in (list, tuple) and len(value) == 4
            and all(type(v) in (int, float) for v in value))


def _as_boxes(values: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """``[x, y, w, h]`` lists as an ``[N, 4]`` float64 array (NaN rows where invalid) and a mask
    of the valid ones."""
    n = len(values)
    if n:
        try:
            arr = np.array(values)
        except (ValueError, OverflowError, TypeError):
            arr = None
        if arr is not None and arr.shape == (n, 4) and arr.dtype.kind in "iuf":
            return arr.astype(np.float64, copy=False), np.ones(n, dtype=bool)
    ok = np.fromiter((_is_box(v) for v in values), bool, count=n)
    nan_box = [math.nan] * 4
    arr = np.array([v if k else nan_box for v, k in zip(values, ok)], dtype=np.float64).reshape(n, 4)
    return arr, ok


def _is_missing(values: list[Any], ok: np.ndarray) -> np.ndarray:
    """Mask of the absent (or null) entries; only scanned when some entry is invalid."""
    if ok.all():
        return np.zeros(len(values), dtype=bool)
    return np.fromiter((v is None for v in values), bool, count=len(values))


def _duplicates(ids: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Positions (ascending) of every valid id equal to an earlier one."""
    pos = np.flatnonzero(valid)
    order = pos[np.argsort(ids[pos], kind="stable")]
    repeat = ids[order][1:] == ids[order][:-1]
    return np.sort(order[1:][repeat])


def _lookup(keys: np.ndarray, values: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each value, its index in the sorted unique ``keys`` and whether it is there."""
    if len(keys) == 0:
        return np.zeros(len(values), dtype=np.int64), np.zeros(len(values), dtype=bool)
    pos = np.minimum(np.searchsorted(keys, values), len(keys) - 1)
    return pos, valid & (keys[pos] == values)


# ----------------------------------------------------------------------------- tables


@dataclass
class _Table:
    """The records of one section (objects only) and where they came from."""

    section: str
    rows: np.ndarray                    # index of each record in data[section]
    records: list[dict[str, Any]]

    def id_of(self, i: int) -> Any:
        return self.records[i].get("id")


def _objects(report: SplitReport, section: str, items: list[Any]) -> _Table:
    """Keep the records that are JSON objects; flag the others."""
    is_obj = np.fromiter((type(r) is dict for r in items), bool, count=len(items))
    if is_obj.all():
        return _Table(section, np.arange(len(items)), items)
    report.flag("invalid_field", np.flatnonzero(~is_obj),
                lambda i: {"section": section, "index": i, "value": repr(items[i])[:60],
                           "error": "not a JSON object"})
    return _Table(section, np.flatnonzero(is_obj), [r for r in items if type(r) is dict])


def _flag_fields(report: SplitReport, table: _Table, columns: dict[str, tuple[list, np.ndarray]],
                 required: Iterable[str]) -> None:
    """Flag absent required fields (one example per record) and present but invalid values."""
    required = [k for k in required if k in columns]
    missing = {k: _is_missing(columns[k][0], columns[k][1]) for k in required}
    any_missing = np.zeros(len(table.records), dtype=bool)
    for m in missing.values():
        any_missing |= m
    report.flag("missing_field", np.flatnonzero(any_missing), lambda i: {
        "section": table.section, "index": int(table.rows[i]), "id": table.id_of(i),
        "missing": [k for k in required if missing[k][i]]})
    for key, (values, ok) in columns.items():
        bad = ~ok & ~missing[key] if key in missing else ~ok & ~_is_missing(values, ok)
        report.flag("invalid_field", np.flatnonzero(bad), lambda i, key=key, values=values: {
            "section": table.section, "index": int(table.rows[i]), "id": table.id_of(i),
            "field": key, "value": values[i]})


@dataclass
class _Images:
    table: _Table
    ids: np.ndarray
    id_ok: np.ndarray
    width: np.ndarray          # float64, NaN where missing or invalid
    height: np.ndarray
    file_names: list[Any]
    name_ok: np.ndarray


def _image_table(report: SplitReport, items: list[Any]) -> _Images:
    """Columns of ``images`` (id, file_name, width, height), flagging absent/invalid fields."""
    t = _objects(report, "images", items)
    ids_raw = [r.get("id") for r in t.records]
    names = [r.get("file_name") for r in t.records]
    ids, id_ok = _as_int64(ids_raw)
    name_ok = np.fromiter((type(n) is str and n != "" for n in names), bool, count=len(names))
    sizes = {}
    columns = {"id": (ids_raw, id_ok), "file_name": (names, name_ok)}
    for key in ("width", "height"):
        raw = [r.get(key) for r in t.records]
        vals, ok = _as_int64(raw)
        ok &= vals > 0
        sizes[key] = np.where(ok, vals, np.nan).astype(np.float64)
        columns[key] = (raw, ok)
    _flag_fields(report, t, columns, ("id", "file_name", "width", "height"))
    return _Images(t, ids, id_ok, sizes["width"], sizes["height"], names, name_ok)


@dataclass
class _Categories:
    table: _Table
    ids: np.ndarray
    id_ok: np.ndarray
    names: list[Any]


def _category_table(report: SplitReport, items: list[Any]) -> _Categories:
    """Columns of ``categories`` (id, name), flagging absent/invalid fields."""
    t = _objects(report, "categories", items)
    ids_raw = [r.get("id") for r in t.records]
    names = [r.get("name") for r in t.records]
    ids, id_ok = _as_int64(ids_raw)
    name_ok = np.fromiter((type(n) is str for n in names), bool, count=len(names))
    _flag_fields(report, t, {"id": (ids_raw, id_ok), "name": (names, name_ok)}, ("id", "name"))
    return _Categories(t, ids, id_ok, names)


@dataclass
class _Annotations:
    table: _Table
    ids: np.ndarray
    id_ok: np.ndarray
    image_ids: np.ndarray
    image_id_ok: np.ndarray
    category_ids: np.ndarray
    category_id_ok: np.ndarray
    boxes: np.ndarray          # [N, 4] float64
    box_ok: np.ndarray         # a list of 4 numbers (maybe non-finite)
    area: np.ndarray           # float64, NaN where absent or not a number
    area_ok: np.ndarray        # a number (maybe non-finite)
    area_present: np.ndarray
    crowd: np.ndarray
    segmentations: list[Any]

    def example(self, i: int, **extra: Any) -> dict[str, Any]:
        """Ids of annotation ``i`` plus ``extra``."""
        return {"id": self.table.id_of(i), "image_id": self.table.records[i].get("image_id"), **extra}


def _annotation_table(report: SplitReport, items: list[Any], iou_type: str) -> _Annotations:
    """Columns of ``annotations``, flagging absent/invalid fields."""
    t = _objects(report, "annotations", items)
    recs = t.records
    raw = {k: [r.get(k) for r in recs] for k in ("id", "image_id", "category_id")}
    ints = {k: _as_int64(v) for k, v in raw.items()}
    bbox_raw = [r.get("bbox") for r in recs]
    boxes, box_ok = _as_boxes(bbox_raw)
    area_raw = [r.get("area") for r in recs]
    area, area_ok = _as_float64(area_raw)
    area_present = ~_is_missing(area_raw, area_ok)
    crowd_raw = [r.get("iscrowd", 0) for r in recs]
    crowd_vals, crowd_ok = _as_int64(crowd_raw)
    crowd = crowd_vals != 0
    if not crowd_ok.all():  # a non-integer iscrowd counts by its truth value
        crowd = np.where(crowd_ok, crowd, np.fromiter((bool(v) for v in crowd_raw), bool,
                                                      count=len(crowd_raw)))
    segs = [r.get("segmentation") for r in recs]
    columns = {k: (raw[k], ints[k][1]) for k in raw}
    columns["bbox"] = (bbox_raw, box_ok)
    columns["area"] = (area_raw, area_ok | ~area_present)  # absent area: a warning, below
    required = ["id", "image_id", "category_id", "bbox"]
    if iou_type == "segm":
        columns["segmentation"] = (segs, np.fromiter((s is not None for s in segs), bool,
                                                     count=len(segs)))
        required.append("segmentation")
    _flag_fields(report, t, columns, required)
    report.flag("missing_area", np.flatnonzero(~area_present),
                lambda i: {"id": t.id_of(i), "image_id": recs[i].get("image_id")})
    return _Annotations(t, *ints["id"], *ints["image_id"], *ints["category_id"], boxes, box_ok,
                        area, area_ok, area_present, crowd, segs)


# ----------------------------------------------------------------------------- annotation checks


def _check_duplicates(report: SplitReport, images: _Images, anns: _Annotations,
                      cats: _Categories) -> None:
    """Duplicate image, annotation and category ids, and file names shared by images."""
    for code, tab, ids, ok in (("duplicate_image_id", images.table, images.ids, images.id_ok),
                               ("duplicate_annotation_id", anns.table, anns.ids, anns.id_ok),
                               ("duplicate_category_id", cats.table, cats.ids, cats.id_ok)):
        report.flag(code, _duplicates(ids, ok), lambda i, tab=tab, ids=ids: {
            "id": int(ids[i]), "index": int(tab.rows[i])})
    seen: dict[str, int] = {}
    shared = []
    for i, name in enumerate(images.file_names):
        if images.name_ok[i] and seen.setdefault(name, i) != i:
            shared.append(i)
    report.flag("duplicate_file_name", shared, lambda i: {
        "file_name": images.file_names[i], "id": images.table.id_of(i),
        "same_as_id": images.table.id_of(seen[images.file_names[i]])})


def _check_references(report: SplitReport, images: _Images, anns: _Annotations,
                      cats: _Categories) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unknown image/category ids; returns each annotation's image width and height (NaN when
    unknown) and its index in the category table (-1 when unknown)."""
    img_keys, img_first = np.unique(images.ids[images.id_ok], return_index=True)
    img_first = np.flatnonzero(images.id_ok)[img_first]
    pos, found = _lookup(img_keys, anns.image_ids, anns.image_id_ok)
    report.flag("unknown_image_id", np.flatnonzero(anns.image_id_ok & ~found),
                lambda i: anns.example(i))
    width = np.where(found, images.width[img_first[pos]] if len(img_first) else np.nan, np.nan)
    height = np.where(found, images.height[img_first[pos]] if len(img_first) else np.nan, np.nan)

    cat_keys, cat_first = np.unique(cats.ids[cats.id_ok], return_index=True)
    cat_first = np.flatnonzero(cats.id_ok)[cat_first]
    cpos, cfound = _lookup(cat_keys, anns.category_ids, anns.category_id_ok)
    report.flag("unknown_category_id", np.flatnonzero(anns.category_id_ok & ~cfound),
                lambda i: anns.example(i, category_id=int(anns.category_ids[i]),
                                       known=[int(c) for c in cat_keys[:20]]))
    cat_index = np.where(cfound, cat_first[cpos] if len(cat_first) else -1, -1)
    return width, height, cat_index


def _check_boxes(report: SplitReport, anns: _Annotations, width: np.ndarray,
                 height: np.ndarray) -> None:
    """Non-finite numbers in bbox/area, non-positive sizes, boxes outside the image."""
    b = anns.boxes
    finite = np.isfinite(b).all(axis=1)
    report.flag("non_finite", np.flatnonzero(anns.box_ok & ~finite),
                lambda i: anns.example(i, field="bbox", value=b[i].tolist()))
    report.flag("non_finite", np.flatnonzero(anns.area_ok & ~np.isfinite(anns.area)),
                lambda i: anns.example(i, field="area", value=float(anns.area[i])))
    good = anns.box_ok & finite
    positive = (b[:, 2] > 0) & (b[:, 3] > 0)
    report.flag("non_positive_box", np.flatnonzero(good & ~positive),
                lambda i: anns.example(i, bbox=b[i].tolist()))
    tol = BOX_TOLERANCE
    with np.errstate(invalid="ignore"):
        outside = ((b[:, 0] < -tol) | (b[:, 1] < -tol)
                   | (b[:, 0] + b[:, 2] > width + tol) | (b[:, 1] + b[:, 3] > height + tol))
    report.flag("box_outside_image", np.flatnonzero(good & positive & outside),
                lambda i: anns.example(i, bbox=b[i].tolist(),
                                       image_size=[float(width[i]), float(height[i])]))


def _check_polygons(report: SplitReport, anns: _Annotations, rows: np.ndarray, width: np.ndarray,
                    height: np.ndarray, severity: str) -> None:
    """Polygon lists of annotations ``rows``: numbers only, finite, even length, at least 3
    points, inside the image (with the box tolerance). Vectorised over all coordinates; each
    annotation is reported once per group, with its first offending polygon."""
    segs = [anns.segmentations[i] for i in rows]
    per_ann = np.fromiter(map(len, segs), np.int64, count=len(segs))
    report.flag("invalid_polygon", rows[per_ann == 0],
                lambda i: anns.example(i, reason="empty polygon list"), severity)
    polys = list(itertools.chain.from_iterable(segs))
    n = len(polys)
    owner = np.repeat(rows, per_ann)  # annotation row of each polygon
    index = np.arange(n) - np.repeat(np.cumsum(per_ann) - per_ann, per_ann)  # within its annotation
    numeric = np.fromiter((type(p) is list for p in polys), bool, count=n)
    lengths = np.fromiter((len(p) if ok else 0 for p, ok in zip(polys, numeric)), np.int64, count=n)
    try:
        coords = np.fromiter(itertools.chain.from_iterable(p for p, ok in zip(polys, numeric) if ok),
                             np.float64, count=int(lengths.sum()))
    except (TypeError, ValueError):  # some polygon holds a non-number: find which, then retry
        numeric &= np.fromiter((ok and all(type(v) in (int, float) for v in p)
                                for p, ok in zip(polys, numeric)), bool, count=n)
        lengths = np.where(numeric, lengths, 0)
        coords = np.fromiter(itertools.chain.from_iterable(p for p, ok in zip(polys, numeric) if ok),
                             np.float64, count=int(lengths.sum()))
    non_finite, outside = _polygon_bounds(coords, lengths, width[owner], height[owner])
    checks: tuple[tuple[str, np.ndarray, Callable[[int], dict]], ...] = (
        ("non_finite", non_finite, lambda p: {"field": "segmentation"}),
        ("invalid_polygon", ~numeric, lambda p: {"reason": "polygon is not a list of numbers"}),
        ("invalid_polygon", lengths % 2 == 1,
         lambda p: {"reason": f"odd number of coordinates ({lengths[p]})"}),
        ("invalid_polygon", numeric & (lengths < 6),
         lambda p: {"reason": f"fewer than 3 points ({lengths[p] // 2})"}),
        ("invalid_polygon", outside, lambda p: {"reason": "points outside the image"}),
    )
    taken = np.zeros(n, dtype=bool)  # each polygon is reported for its first problem only
    for code, mask, describe in checks:
        mask = mask & ~taken
        taken |= mask
        bad = np.flatnonzero(mask)
        ann_rows, first = np.unique(owner[bad], return_index=True)
        first_poly = dict(zip(ann_rows.tolist(), bad[first].tolist()))
        report.flag(code, ann_rows, lambda i, fp=first_poly, d=describe: anns.example(
            i, polygon=int(index[fp[i]]), **d(fp[i])),
            severity if code == "invalid_polygon" else None)


def _polygon_bounds(coords: np.ndarray, lengths: np.ndarray, width: np.ndarray,
                    height: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per polygon: whether it holds a non-finite coordinate, and whether a point lies outside
    ``[0, width] x [0, height]`` by more than the tolerance. ``coords`` are all polygons'
    coordinates back to back (``lengths`` each). Works on per-polygon min/max reductions, so the
    image size is never spread over the coordinates."""
    n = len(lengths)
    ends = np.cumsum(lengths)
    non_finite = np.zeros(n, dtype=bool)
    finite = np.isfinite(coords)
    if not finite.all():
        non_finite[np.searchsorted(ends, np.flatnonzero(~finite), side="right")] = True
    # Odd-length polygons (reported as such) are left out, so x and y alternate from each start.
    odd = lengths % 2 == 1
    if odd.any():
        coords = coords[np.repeat(~odd, lengths)]
        lengths = np.where(odd, 0, lengths)
        ends = np.cumsum(lengths)
    outside = np.zeros(n, dtype=bool)
    has = lengths > 0  # reduceat needs non-empty segments
    if has.any():
        first_point = (ends - lengths)[has] // 2
        xs, ys = coords[0::2], coords[1::2]
        tol = BOX_TOLERANCE
        with np.errstate(invalid="ignore"):
            outside[has] = ((np.minimum.reduceat(xs, first_point) < -tol)
                            | (np.minimum.reduceat(ys, first_point) < -tol)
                            | (np.maximum.reduceat(xs, first_point) > width[has] + tol)
                            | (np.maximum.reduceat(ys, first_point) > height[has] + tol))
    return non_finite, outside


def decode_rle_strings(strings: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode compressed COCO RLE ``counts`` strings (pycocotools' ``rleFrString``) in one pass.

    Returns ``(counts, owner, malformed)``: the run lengths of all well-formed strings, the index
    of the string each belongs to, and a per-string mask of the strings that cannot be decoded
    (a character outside ``'0'..'o'``, a value left unterminated, a value over 60 bits, or a run
    length outside 0..2**32-1). pycocotools does not check these and may read or write out of
    bounds on them.
    """
    n = len(strings)
    malformed = np.fromiter((not s.isascii() for s in strings), bool, count=n)
    if malformed.any():
        strings = [s if not bad else "" for s, bad in zip(strings, malformed)]
    lengths = np.fromiter(map(len, strings), np.int64, count=n)
    ends = np.cumsum(lengths)
    c = np.frombuffer("".join(strings).encode("ascii"), np.uint8).astype(np.int64) - 48
    bad_char = (c < 0) | (c > 63)
    if bad_char.any():
        malformed[np.searchsorted(ends, np.flatnonzero(bad_char), side="right")] = True
    nonempty = np.flatnonzero(lengths > 0)
    malformed[nonempty[(c[ends[nonempty] - 1] & 0x20) != 0]] = True  # last value unterminated
    if malformed.any():
        c = c[np.repeat(~malformed, lengths)]
        lengths = np.where(malformed, 0, lengths)
        ends = np.cumsum(lengths)
    # Each value is 5 bits per character, low bits first; 0x20 means "more characters follow"
    # and 0x10 on the last character makes the value negative.
    last = np.flatnonzero((c & 0x20) == 0)
    if len(last) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), malformed
    first = np.concatenate(([0], last[:-1] + 1))
    nchar = last - first + 1
    x = np.zeros(len(last), dtype=np.int64)
    for j in range(int(min(nchar.max(initial=0), 12))):
        sel = np.flatnonzero(nchar > j) if j else slice(None)
        x[sel] |= (c[first[sel] + j] & 0x1F) << (5 * j)
    nbits = 5 * np.minimum(nchar, 12)
    x -= np.where((c[last] & 0x10) != 0, np.int64(1) << nbits, 0)
    owner = np.searchsorted(ends, last, side="right")
    malformed[owner[(nchar > 12) | (np.abs(x) >= 2**33)]] = True
    x = np.clip(x, -(2**33), 2**33)  # (those strings are dropped) so the sums below cannot overflow
    # Delta coding: counts[i] = x[i] + counts[i-2] for i > 2, so counts are running sums of x
    # along the odd positions (1, 3, 5, ...) and the even ones from 2 (2, 4, ...) of each string.
    per_string = np.bincount(owner, minlength=n)
    start = np.repeat(np.cumsum(per_string) - per_string, per_string)
    pos = np.arange(len(x)) - start
    counts = x.copy()
    for chain in (pos % 2 == 1, (pos % 2 == 0) & (pos > 0)):
        part = x * chain
        running = np.cumsum(part)
        before = (running - part)[start]  # running sum before the string's first value
        counts[chain] = (running - before)[chain]
    malformed[owner[(counts < 0) | (counts >= 2**32)]] = True
    keep = ~malformed[owner]
    return counts[keep], owner[keep], malformed


def _rle_size(seg: dict[str, Any]) -> tuple[int, int] | None:
    size = seg.get("size")
    if type(size) is list and len(size) == 2 and all(type(v) is int and v >= 0 for v in size):
        return size[0], size[1]
    return None


def _check_rles(report: SplitReport, anns: _Annotations, rows: np.ndarray, width: np.ndarray,
                height: np.ndarray, severity: str) -> None:
    """RLE objects of annotations ``rows``: ``size`` equal to the image's ``[height, width]``,
    ``counts`` decodable with run lengths summing to height * width."""
    problems: list[tuple[int, str]] = []
    strings: list[str] = []
    string_rows: list[tuple[int, int]] = []  # (annotation row, height * width)
    for i in rows.tolist():
        seg = anns.segmentations[i]
        size, counts = _rle_size(seg), seg.get("counts")
        if size is None:
            problems.append((i, f"'size' must be [height, width], got {seg.get('size')!r}"[:120]))
            continue
        if not (np.isnan(width[i]) or np.isnan(height[i])
                or (size[0], size[1]) == (height[i], width[i])):
            problems.append((i, f"size {list(size)} differs from the image's "
                                f"[{int(height[i])}, {int(width[i])}]"))
            continue
        if type(counts) is str:
            strings.append(counts)
            string_rows.append((i, size[0] * size[1]))
        elif type(counts) is list:
            arr, ok = _as_int64(counts)
            if not ok.all() or (arr < 0).any():
                problems.append((i, "uncompressed counts must be non-negative integers"))
            elif int(arr.sum()) != size[0] * size[1]:
                problems.append((i, f"counts sum to {int(arr.sum())}, not height*width = "
                                    f"{size[0] * size[1]}"))
        else:
            problems.append((i, "'counts' must be a string or a list of run lengths"))
    if strings:
        counts, owner, malformed = decode_rle_strings(strings)
        totals = np.bincount(owner, weights=counts, minlength=len(strings))
        for j, (i, area) in enumerate(string_rows):
            if malformed[j]:
                problems.append((i, "malformed compressed counts string"))
            elif int(totals[j]) != area:
                problems.append((i, f"counts sum to {int(totals[j])}, not height*width = {area}"))
    problems.sort()
    reason = dict(problems)
    report.flag("invalid_rle", [i for i, _ in problems],
                lambda i: anns.example(i, reason=reason[i]), severity)


def _check_segmentations(report: SplitReport, anns: _Annotations, width: np.ndarray,
                         height: np.ndarray, iou_type: str) -> None:
    """Dispatch polygons and RLEs to their checks; errors for segm, warnings for bbox."""
    severity = ERROR if iou_type == "segm" else WARNING
    kind = np.fromiter((0 if s is None else 1 if type(s) is list else 2 if type(s) is dict else 3
                        for s in anns.segmentations), np.int8, count=len(anns.segmentations))
    report.flag("invalid_polygon", np.flatnonzero(kind == 3), lambda i: anns.example(
        i, reason="segmentation must be a list of polygons or an RLE object"), severity)
    _check_polygons(report, anns, np.flatnonzero(kind == 1), width, height, severity)
    _check_rles(report, anns, np.flatnonzero(kind == 2), width, height, severity)


def _statistics(report: SplitReport, images: _Images, anns: _Annotations, cats: _Categories,
                cat_index: np.ndarray) -> None:
    """Crowd count, images without annotations, per-category counts, area histogram."""
    report.num_images = len(images.table.records)
    report.num_annotations = len(anns.table.records)
    report.num_crowd = int(anns.crowd.sum())
    report.flag("crowd", np.flatnonzero(anns.crowd), lambda i: anns.example(i))
    annotated = np.isin(images.ids, anns.image_ids[anns.image_id_ok])
    report.flag("image_without_annotations", np.flatnonzero(images.id_ok & ~annotated),
                lambda i: {"id": int(images.ids[i]), "file_name": images.file_names[i]})
    known = cat_index >= 0
    n_cats = len(cats.table.records)
    plain = np.bincount(cat_index[known & ~anns.crowd], minlength=n_cats)
    crowd = np.bincount(cat_index[known & anns.crowd], minlength=n_cats)
    # COCOeval's size ranges by the annotation's area: 0 small, 1 medium, 2 large (non-crowd)
    sized = ~anns.crowd & np.isfinite(anns.area)
    size_bin = np.searchsorted([SMALL_AREA, MEDIUM_AREA], anns.area[sized], side="right")
    total = np.bincount(size_bin, minlength=3)
    report.area_histogram = {name: int(total[k]) for k, name in enumerate(SIZE_NAMES)}
    in_cat = known[sized]
    per_cat = np.bincount(cat_index[sized][in_cat] * 3 + size_bin[in_cat],
                          minlength=3 * n_cats).reshape(n_cats, 3)
    report.categories = [
        {"id": int(cats.ids[j]) if cats.id_ok[j] else None, "name": _json_safe(cats.names[j]),
         "annotations": int(plain[j]), "crowd": int(crowd[j]),
         "sizes": {name: int(per_cat[j, k]) for k, name in enumerate(SIZE_NAMES)}}
        for j in range(n_cats)
    ]


def check_annotations(data: Any, report: SplitReport, iou_type: str = "bbox") -> _Images | None:
    """Run every annotation check on a parsed COCO dict, adding to ``report``. Returns the image
    table for the file checks, or None when the structure is too broken to go on."""
    if not isinstance(data, dict):
        report.flag("invalid_structure", [0], lambda _: {
            "error": f"top level must be an object, got {type(data).__name__}"})
        return None
    broken = [k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)]
    report.flag("invalid_structure", range(len(broken)), lambda j: {
        "key": broken[j], "error": "missing" if broken[j] not in data else "not a list"})
    if broken:
        return None
    images = _image_table(report, data["images"])
    cats = _category_table(report, data["categories"])
    anns = _annotation_table(report, data["annotations"], iou_type)
    if not images.table.records:
        report.flag("no_images", [0], lambda _: {"images": 0})
    _check_duplicates(report, images, anns, cats)
    width, height, cat_index = _check_references(report, images, anns, cats)
    _check_boxes(report, anns, width, height)
    _check_segmentations(report, anns, width, height, iou_type)
    _statistics(report, images, anns, cats, cat_index)
    return images


# ----------------------------------------------------------------------------- image files

# Truncation check without decoding: a complete JPEG ends with the EOI marker FF D9, a complete
# PNG with the 12-byte IEND chunk (length 0, "IEND", fixed CRC). Reading the header plus the
# last few KiB costs two small reads per file where a full decode costs milliseconds per image
# (minutes for COCO). The marker is searched in the last 4 KiB, not just the last bytes, because
# some writers pad after it; if it is not there the image is decoded in full to decide, so files
# with data appended after the end marker (e.g. "motion photo" JPEGs) are not reported. FF D9
# cannot occur inside JPEG entropy-coded data (FF is stuffed as FF 00), so a file cut in the
# middle of its scan data does not contain it near its end.
END_MARKERS = {"JPEG": b"\xff\xd9", "MPO": b"\xff\xd9", "PNG": b"\x00\x00\x00\x00IEND\xaeB`\x82"}
TAIL_BYTES = 4096


@dataclass(frozen=True)
class ImageCheck:
    """Outcome of inspecting one image file: ``status`` is ``"ok"`` or a problem code."""

    status: str
    size: tuple[int, int] | None = None   # upright (width, height), as load_rgb returns it
    error: str = ""


def _has_end_marker(f: Any, fmt: str | None) -> bool:
    """Whether the end marker of ``fmt`` is in the last :data:`TAIL_BYTES` (True for formats
    without one we know)."""
    marker = END_MARKERS.get(fmt or "")
    if marker is None:
        return True
    pos = f.tell()
    f.seek(0, os.SEEK_END)
    f.seek(max(0, f.tell() - TAIL_BYTES))
    tail = f.read()
    f.seek(pos)
    return marker in tail


def _upright_size(img: Image.Image) -> tuple[int, int]:
    """Size after EXIF orientation, as backbones_tools.data.images.load_rgb returns the image."""
    w, h = img.size
    # For PNG, getexif() decodes the whole image unless an eXIf chunk came before the pixels.
    if img.format == "PNG" and "exif" not in img.info:
        return w, h
    orientation = img.getexif().get(0x0112, 1)
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def inspect_image(path: PathLike, full: bool = False) -> ImageCheck:
    """Check one image file: present, readable header, not truncated, and its upright size.

    ``full`` decodes all pixels (``img.load()``), as training will; otherwise only the header is
    parsed and truncation is detected from the end marker (see :data:`END_MARKERS`).
    """
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below, after PIL is done with it
    except FileNotFoundError:
        return ImageCheck("missing_image_file")
    except OSError as exc:
        return ImageCheck("unreadable_image", error=f"{type(exc).__name__}: {exc.strerror or exc}")
    with f:
        fmt = None
        try:
            with Image.open(f) as img:
                fmt = img.format
                if full or not _has_end_marker(f, fmt):
                    img.load()
                return ImageCheck("ok", _upright_size(img))
        # PIL plugins raise many types on corrupt files (OSError, SyntaxError, struct.error,
        # IndexError, DecompressionBombError, ...): any failure here means "cannot be decoded".
        except Exception as exc:  # noqa: BLE001
            message = f"{type(exc).__name__}: {exc}"[:200]
            truncated = "truncated" in str(exc) or (fmt is not None and not _has_end_marker(f, fmt))
            return ImageCheck("truncated_image" if truncated else "unreadable_image", error=message)


def _inspect_chunk(paths: list[str], full: bool) -> list[ImageCheck]:
    return [inspect_image(p, full) for p in paths]


def default_workers() -> int:
    """Threads for the image checks: file I/O and PIL's decoders release the GIL."""
    return min(8, os.cpu_count() or 1)


def check_image_files(report: SplitReport, image_dir: Path, images: _Images, full: bool = False,
                      workers: int | None = None) -> None:
    """Inspect the file of every image record with a valid file name, in order, on threads."""
    if not image_dir.is_dir():
        report.flag("missing_image_dir", [0], lambda _: {"dir": str(image_dir)})
        return
    rows = np.flatnonzero(images.name_ok)
    base = str(image_dir)
    paths = [os.path.join(base, images.file_names[i]) for i in rows]
    chunks = [paths[k:k + 64] for k in range(0, len(paths), 64)]
    workers = workers or default_workers()
    if workers <= 1 or len(chunks) <= 1:
        results = [r for chunk in chunks for r in _inspect_chunk(chunk, full)]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = [r for part in pool.map(_inspect_chunk, chunks, itertools.repeat(full))
                       for r in part]
    status = np.array([r.status for r in results], dtype=object)

    def example(k: int, **extra: Any) -> dict[str, Any]:
        i = rows[k]
        return {"id": images.table.id_of(i), "file_name": images.file_names[i], **extra}

    for code in ("missing_image_file", "unreadable_image", "truncated_image"):
        report.flag(code, np.flatnonzero(status == code), lambda k: example(
            k, **({"error": results[k].error} if results[k].error else {})))
    got = np.array([r.size if r.size else (-1, -1) for r in results], dtype=np.float64).reshape(-1, 2)
    want = np.stack([images.width[rows], images.height[rows]], axis=1)
    differs = (status == "ok") & ~np.isnan(want).any(axis=1) & (got != want).any(axis=1)
    report.flag("image_size_mismatch", np.flatnonzero(differs), lambda k: example(
        k, size=list(results[k].size), expected=[int(want[k, 0]), int(want[k, 1])]))


# ----------------------------------------------------------------------------- entry points


def split_files(root: PathLike, split: str) -> tuple[Path, Path]:
    """``(<root>/<split>/, <root>/annotations/instances_<split>.json)``, as training reads them."""
    root = Path(root)
    return root / split, root / "annotations" / f"instances_{split}.json"


def discover_splits(root: PathLike) -> list[str]:
    """Split names of the ``annotations/instances_<split>.json`` files under ``root``, sorted."""
    folder = Path(root) / "annotations"
    return sorted(p.name[len("instances_"):-len(".json")] for p in folder.glob("instances_*.json"))


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: parsing and tabulating a large annotation file makes
    millions of acyclic lists and dicts, and each collection would rescan all of them (seconds
    for COCO train2017)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def check_split(root: PathLike, split: str, iou_type: str = "bbox", full: bool = False, *,
                workers: int | None = None, log: Log | None = None) -> SplitReport:
    """Check one split's annotation file and image files; see the module docstring.

    Raises :class:`DatasetNotFoundError` when ``root`` or the annotation file does not exist
    and ValueError for an unknown ``iou_type``; everything else is a finding in the report.
    """
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    if not Path(root).is_dir():
        raise DatasetNotFoundError(f"data root {str(root)!r} does not exist")
    image_dir, ann_file = split_files(root, split)
    if not ann_file.is_file():
        raise DatasetNotFoundError(f"split {split!r}: annotation file {ann_file} not found")
    report = SplitReport(split, str(ann_file), str(image_dir), iou_type, full)
    say = log or (lambda _msg: None)
    say(f"{split}: reading {ann_file}")
    t0 = time.perf_counter()
    with _gc_paused():
        try:
            data = read_json(ann_file)
        except CocoFormatError as exc:
            message = str(exc)
            report.flag("malformed_json", [0], lambda _: {"error": message})
            return report
        t1 = time.perf_counter()
        report.seconds["read_json"] = t1 - t0
        images = check_annotations(data, report, iou_type)
        del data
    t2 = time.perf_counter()
    report.seconds["annotation_checks"] = t2 - t1
    if images is not None:
        say(f"{split}: checking {int(images.name_ok.sum())} image files in {image_dir} "
            f"({'full decode' if full else 'headers'})")
        check_image_files(report, image_dir, images, full, workers)
        report.seconds["image_checks"] = time.perf_counter() - t2
    return report


def check_dataset(root: PathLike, splits: Sequence[str] | None = None, iou_type: str = "bbox",
                  full: bool = False, *, workers: int | None = None,
                  log: Log | None = None) -> DatasetReport:
    """Check several splits of ``root`` (default: every ``annotations/instances_*.json``)."""
    if not Path(root).is_dir():
        raise DatasetNotFoundError(f"data root {str(root)!r} does not exist")
    names = list(splits) if splits else discover_splits(root)
    if not names:
        raise DatasetNotFoundError(f"no annotations/instances_<split>.json under {str(root)!r}")
    reports = [check_split(root, s, iou_type, full, workers=workers, log=log) for s in names]
    return DatasetReport(str(root), reports)
