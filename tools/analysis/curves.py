"""Training curves of run folders from their ``metrics.jsonl``: every loss term (long series with a
moving average over the faint raw values), the learning rate and the headline metric (``bbox/AP``,
``segm/AP``, ``seg/mIoU``) against the iteration, and the headline metric against wall-clock time;
several runs overlaid in one colour each."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from backbones_tools.analysis import AnalysisError

logger = logging.getLogger(__name__)

METRICS_NAME = "metrics.jsonl"
#: headline metrics, drawn when a run's evaluations have them (``bbox/AP`` and ``segm/AP`` both
#: for Mask R-CNN)
HEADLINES = ("bbox/AP", "segm/AP", "seg/mIoU")
#: loss series longer than this get a moving average drawn over the faint raw values
SMOOTH_FROM = 25
_STYLES = {"bbox/AP": "-", "segm/AP": "--", "seg/mIoU": "-."}


@dataclass
class RunLog:
    """The records of one run that the curves need."""

    name: str
    train: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    #: seconds since the run started, per record of ``evals``, without the time it was stopped
    #: between a stop/crash and ``--resume``
    eval_elapsed: list[float] = field(default_factory=list)

    @property
    def loss_keys(self) -> list[str]:
        """Loss terms logged (``loss``, the total, first; then in logging order)."""
        keys = list(dict.fromkeys(k for r in self.train for k in r
                                  if k.startswith("loss") and _number(r[k]) is not None))
        return sorted(keys, key=lambda k: (k != "loss", keys.index(k)))

    @property
    def headlines(self) -> list[str]:
        """Headline metrics the evaluations logged."""
        return [k for k in HEADLINES if any(_number(r.get(k)) is not None for r in self.evals)]


def _number(value: Any) -> float | None:
    """A finite float, else None (NaN is logged as null)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _read_records(path: Path) -> list[dict[str, Any]]:
    """All records; a line that is not a JSON object (a run killed mid-write) is skipped with a warning."""
    records, bad = [], 0
    for line in filter(str.strip, path.read_text(encoding="utf-8").splitlines()):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            bad += 1
    if bad:
        logger.warning("%s: skipped %d line(s) that are not JSON objects", path, bad)
    return records


def load_run(folder: str | os.PathLike[str], name: str | None = None) -> RunLog:
    """The train and eval records of a run folder. After a ``resume`` record, what was logged past
    the resumed iteration before the stop is dropped (that part was trained again)."""
    folder = Path(folder)
    path = folder / METRICS_NAME
    if not folder.is_dir():
        raise FileNotFoundError(f"run folder not found: {folder}")
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {METRICS_NAME} (is it a run folder of train_det.py / train_seg.py?)")
    run = RunLog(name or folder.resolve().name)
    start = previous = None
    paused = 0.0
    for r in _read_records(path):
        t = _number(r.get("time"))
        start = t if start is None else start
        if r.get("type") == "resume":
            it = r.get("global_iter", 0)
            run.train = [x for x in run.train if x.get("global_iter", 0) <= it]
            keep = [i for i, x in enumerate(run.evals) if x.get("global_iter", 0) <= it]
            run.evals = [run.evals[i] for i in keep]
            run.eval_elapsed = [run.eval_elapsed[i] for i in keep]
            if t is not None and previous is not None:
                paused += t - previous
        elif r.get("type") == "train":
            run.train.append(r)
        elif r.get("type") == "eval":
            run.evals.append(r)
            run.eval_elapsed.append((t - start - paused) if t is not None else math.nan)
        previous = t if t is not None else previous
    return run


def _smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Centred moving average (shorter windows at the ends)."""
    kernel = np.ones(window)
    return np.convolve(values, kernel, "same") / np.convolve(np.ones(len(values)), kernel, "same")


def _time_unit(seconds: float) -> tuple[float, str]:
    if seconds > 3 * 3600:
        return 3600.0, "h"
    if seconds > 600:
        return 60.0, "min"
    return 1.0, "s"


def _series(records: Sequence[dict[str, Any]], key: str, x_key: str = "global_iter") -> tuple[list, list]:
    """``(x, y)`` points of ``key``; a negative metric (COCOeval's -1: no ground truth) is left out."""
    xs, ys = [], []
    for r in records:
        y = _number(r.get(key))
        if y is not None and not (key in HEADLINES and y < 0) and r.get(x_key) is not None:
            xs.append(r[x_key])
            ys.append(y)
    return xs, ys


def plot_curves(runs: Sequence[RunLog], out: str | os.PathLike[str], title: str | None = None) -> Path:
    """Draw the curves of ``runs`` (see the module docstring) into the PNG ``out``."""
    if not any(r.train or r.evals for r in runs):
        raise AnalysisError("no train or eval records in " + ", ".join(r.name for r in runs))
    for r in runs:
        if not (r.train or r.evals):
            logger.warning("run %s has no train or eval records yet; it is left out", r.name)
    loss_keys = list(dict.fromkeys(k for r in runs for k in r.loss_keys))
    headlines = list(dict.fromkeys(k for r in runs for k in r.headlines))
    panels = [*loss_keys, "lr", "metric/iter", "metric/time"]
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(5.2 * ncols, 3.6 * nrows + 0.8), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    colours = [f"C{i % 10}" for i in range(len(runs))]
    scale, unit = _time_unit(max((t for r in runs for t in r.eval_elapsed if math.isfinite(t)), default=0.0))
    metric_name = " / ".join(headlines) or "metric"

    for ax, panel in zip(axes, panels):
        for run, colour in zip(runs, colours):
            if panel in loss_keys:
                xs, ys = _series(run.train, panel)
                noisy = len(ys) > SMOOTH_FROM
                ax.plot(xs, ys, color=colour, marker="o" if len(xs) == 1 else None, lw=0.8 if noisy else 1.3,
                        alpha=0.3 if noisy else 1.0)
                if noisy:
                    ax.plot(xs, _smooth(ys, max(len(ys) // SMOOTH_FROM, 3)), color=colour, lw=1.6)
            elif panel == "lr":
                xs, ys = _series(run.train, panel)
                ax.plot(xs, ys, color=colour, marker="o" if len(xs) == 1 else None, lw=1.3)
            else:
                for key in run.headlines:
                    if panel == "metric/iter":
                        xs, ys = _series(run.evals, key)
                    else:
                        timed = [{**e, "elapsed": t / scale} for t, e in zip(run.eval_elapsed, run.evals)
                                 if math.isfinite(t)]
                        xs, ys = _series(timed, key, x_key="elapsed")
                    ax.plot(xs, ys, color=colour, ls=_STYLES[key], marker="o", ms=3.5, lw=1.3)
        if panel in loss_keys:
            ax.set(title="total loss" if panel == "loss" else panel, xlabel="iteration", ylabel="loss")
            ys = [y for r in runs for y in _series(r.train, panel)[1]]
            if ys and min(ys) > 0 and max(ys) / min(ys) > 100:
                ax.set_yscale("log")
        elif panel == "lr":
            ax.set(title="learning rate", xlabel="iteration", ylabel="lr")
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        elif panel == "metric/iter":
            ax.set(title=f"{metric_name} by iteration", xlabel="iteration", ylabel=metric_name)
        else:
            ax.set(title=f"{metric_name} by wall-clock time", xlabel=f"time since start ({unit})",
                   ylabel=metric_name)
        if panel.startswith("metric/") and ax.get_lines():  # from 0, with room for the last points
            ax.set_xlim(0, max(ax.dataLim.x1, 1e-9) * 1.06)
            ax.set_ylim(0, max(ax.dataLim.y1, 1e-3) * 1.1)
        if panel.startswith("metric/") and len(headlines) > 1:  # line styles tell the metrics apart
            styles = [ax.plot([], [], color="0.3", ls=_STYLES[k])[0] for k in headlines]
            ax.legend(styles, headlines, fontsize=8, loc="best")
        ax.grid(True, alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    handles = [axes[0].plot([], [], color=c, lw=2)[0] for c in colours]
    fig.legend(handles, [r.name for r in runs], loc="outside lower center", ncols=min(len(runs), 4),
               title="run", fontsize=9)
    fig.suptitle(title or ("Training curves: " + ", ".join(r.name for r in runs[:4])
                           + (f" (+{len(runs) - 4})" if len(runs) > 4 else "")), fontsize=13)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def run_names(folders: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Legend names: the folder names, or the paths as given where two folders share a name."""
    names = [Path(f).resolve().name for f in folders]
    return [str(f) if names.count(n) > 1 else n for f, n in zip(folders, names)]


def curves(folders: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str],
           title: str | None = None) -> Path:
    """Load each run folder and draw their curves into ``out`` (PNG)."""
    return plot_curves([load_run(f, n) for f, n in zip(folders, run_names(folders))], out, title)
