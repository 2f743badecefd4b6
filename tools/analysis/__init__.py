"""Analysis of finished runs and predictions, behind ``tools/analyze.py``: training curves from
``metrics.jsonl`` (:mod:`backbones_tools.analysis.curves`), detection and segmentation confusion matrices and
per-class precision-recall curves (:mod:`backbones_tools.analysis.confusion`). Figures are drawn with
matplotlib's Agg canvas (no display needed)."""

from __future__ import annotations

from backbones_tools.data.errors import DatasetError


class AnalysisError(DatasetError):
    """A run folder or input cannot be analysed (no records to plot, a run of the wrong task).

    A :class:`~backbones_tools.data.errors.DatasetError`, so the CLIs report it as a user error (exit 2)."""
