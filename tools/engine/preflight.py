"""The preflight of a run: the splits it will touch are checked (annotations, files, image
headers) before the first iteration, so a bad file stops the run at once instead of hours in.

With ``data.skip_invalid`` the faulty images and annotations are left out instead, and what was
left out is reported (console and ``metrics.jsonl``); faults that make a split unusable (malformed
JSON, duplicate ids) stop the run either way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backbones_tools.data.checks import SplitReport, check_split
from backbones_tools.data.errors import DatasetError

logger = logging.getLogger(__name__)


@dataclass
class Exclusions:
    """What a run leaves out of one split (``data.skip_invalid``)."""

    image_ids: set[Any] = field(default_factory=set)
    annotation_ids: set[Any] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.image_ids or self.annotation_ids)


@dataclass
class Preflight:
    """The reports of the checked splits and the exclusions per split."""

    reports: dict[str, SplitReport]
    exclusions: dict[str, Exclusions]

    def record(self) -> dict[str, Any]:
        """The ``preflight`` line of ``metrics.jsonl``: per split, the error count and what was left out."""
        out = {}
        for split, report in self.reports.items():
            ex = self.exclusions.get(split, Exclusions())
            out[split] = {"ok": report.ok, "errors": report.num_errors, "warnings": report.num_warnings,
                          "skipped_images": len(ex.image_ids), "skipped_annotations": len(ex.annotation_ids),
                          "problems": {f.code: {"count": f.count, "examples": f.examples[:3]}
                                       for f in report.sorted_findings() if f.severity == "error"}}
        return out


def run_preflight(root: Path, splits: dict[str, str], iou_type: str, skip_invalid: bool) -> Preflight:
    """Check each split (``{"train": "train2017", "val": "val2017"}``); raise :class:`DatasetError`
    with the report when one has errors that are not to be (or cannot be) skipped."""
    reports, exclusions = {}, {}
    for role, split in splits.items():
        report = check_split(root, split, iou_type)
        reports[split] = report
        if report.ok:
            continue
        if not skip_invalid or not report.skippable:
            raise DatasetError(_stop_message(report, role, skip_invalid))
        exclusions[split] = Exclusions(set(report.bad_image_ids), set(report.bad_annotation_ids))
        logger.warning("data.skip_invalid: leaving out %d images and %d annotations of %s (%d errors):\n%s",
                       len(report.bad_image_ids), len(report.bad_annotation_ids), split,
                       report.num_errors, report.format())
    return Preflight(reports, exclusions)


def run_preflight_once(root: Path, splits: dict[str, str], iou_type: str, skip_invalid: bool) -> Preflight:
    """:func:`run_preflight` on rank 0 only (under DDP the others receive its outcome, so the
    files are read once, not once a rank); every rank raises the same :class:`DatasetError`."""
    from backbones_tools import distributed as D

    outcome: tuple[str, Any] = ("", None)
    if D.rank() == 0:
        try:
            outcome = ("ok", run_preflight(root, splits, iou_type, skip_invalid))
        except DatasetError as exc:
            outcome = ("error", str(exc))
    kind, value = D.broadcast_object(outcome)
    if kind == "error":
        raise DatasetError(value)
    return value


def _stop_message(report: SplitReport, role: str, skip_invalid: bool) -> str:
    if skip_invalid:
        hint = "these faults cannot be skipped (the split's structure or ids are broken); fix the file"
    else:
        hint = ("fix them, or set data.skip_invalid=true to leave the faulty images and annotations out "
                f"(a {role} image left out is also left out of the score); details: "
                f"python tools/check_dataset.py --data-root {Path(report.image_dir).parent}")
    return f"the {role} split {report.split!r} has {report.num_errors} errors; stopped before anything ran:\n" \
           f"{report.format()}\n{hint}"
