"""Starting a run from weights: the trunk from any checkpoint this package (or torchvision,
timm, detectron2, MMDetection) writes, or the whole model from a run checkpoint, each with a
load report that is printed and logged."""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from backbones import load_matching, load_weights, read_state_dict
from backbones.weights import LoadReport, WeightsFileError, WeightsMismatchError

logger = logging.getLogger(__name__)


def report_record(report: LoadReport) -> dict[str, Any]:
    """A load report as a ``metrics.jsonl`` field: counts, and the first names of what did not load."""
    return {"source": report.source, "format": report.format, "loaded": len(report.loaded),
            "ignored": len(report.ignored), "left_at_init": len(report.initialized),
            "missing": report.missing[:10], "unexpected": report.unexpected[:10],
            "notes": list(report.notes)}


def init_trunk(trunk: nn.Module, source: str, arch: str) -> LoadReport:
    """Load the trunk weights in ``source`` into ``trunk`` (strictly) and return the report.

    ``source`` may be a plain trunk file, a detector's or segmenter's run checkpoint of this
    package, a torchvision detector or any format :func:`backbones.load_weights` reads. A file
    with no weights for the trunk, or with a trunk of another architecture, is a
    :class:`WeightsFileError` naming the file.
    """
    try:
        report = load_weights(trunk, source)
    except WeightsMismatchError as err:
        expected = [k for k in trunk.state_dict() if not k.endswith("num_batches_tracked")]
        if len(err.report.missing) >= len(expected):
            raise WeightsFileError(
                f"{source} holds no weights for the {arch} trunk (read as {err.report.format} format, "
                f"{len(err.report.unexpected)} keys of something else); give a trunk checkpoint or a "
                "detector/segmenter run checkpoint (best.pth) with this trunk"
            ) from None
        raise WeightsFileError(
            f"{source} does not fit the {arch} trunk (another architecture?):\n{err.report}") from None
    logger.info("model.backbone.weights: %s", report)
    return report


def init_model(model: nn.Module, source: str) -> LoadReport:
    """Initialise a whole model from a run checkpoint (its ``model`` entry) or a state dict with
    this package's key names; keys that do not fit are reported, not loaded."""
    state, name, raw = read_state_dict(source)
    if isinstance(raw, dict) and isinstance(raw.get("model"), dict):
        state = raw["model"]
    report = load_matching(model, state, source=name, format="native", strict=False)
    if not report.loaded:
        raise WeightsFileError(f"{source}: no tensor fits this model (model.weights); is it a checkpoint "
                               "of the same kind of model?")
    logger.info("model.weights: %s", report)
    return report
