"""Metrics to a JSONL file (one object a line), optionally mirrored to TensorBoard, and to the
console."""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backbones_tools.files import json_safe

#: how to install the optional TensorBoard dependency
TENSORBOARD_INSTALL = 'pip install -e ".[tensorboard]"'
#: bookkeeping fields of a record: not scalars for TensorBoard
NOT_SCALARS = frozenset({"type", "epoch", "iter", "global_iter", "time", "cpu_seconds", "eta_s"})


class JsonlWriter:
    """Appends one JSON object per line to ``path`` (flushed each time, so a killed run keeps
    everything logged before it died). Disabled (no file) when ``path`` is None. ``mirror``, if
    given, receives each record as written (e.g. :class:`TensorBoardMirror`); :meth:`close`
    closes it."""

    def __init__(self, path: str | os.PathLike[str] | None,
                 mirror: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.mirror = mirror if path is not None else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` with a wall-clock ``time`` field (and pass it to the mirror)."""
        if self.path is None:
            return
        record = json_safe({**record, "time": round(time.time(), 3)})
        line = json.dumps(record, sort_keys=False)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")
        if self.mirror is not None:
            self.mirror(record)

    def close(self) -> None:
        """Close the mirror (later records go to the file only)."""
        mirror, self.mirror = self.mirror, None
        if mirror is not None and hasattr(mirror, "close"):
            mirror.close()


def summary_writer_class() -> type:
    """``torch.utils.tensorboard.SummaryWriter``; a ConfigError naming the install command when
    the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        from backbones_tools.config.loader import ConfigError

        raise ConfigError("train.tensorboard is true but the tensorboard package is not installed; "
                          f"install it with: {TENSORBOARD_INSTALL}") from None
    return SummaryWriter


class TensorBoardMirror:
    """Writes the scalars of ``train`` and ``eval`` records as TensorBoard events at step
    ``global_iter``: a train record's values as ``train/<key>`` (loss terms, ``lr``,
    ``sec_per_iter``, gradient norms), an eval record's metrics under their own names
    (``bbox/AP``, ``seg/mIoU``, ...) and its other numbers as ``eval/<key>``. Flushed after each
    record, like the JSONL file."""

    def __init__(self, log_dir: str | os.PathLike[str]) -> None:
        self.writer = summary_writer_class()(log_dir=str(log_dir))

    @staticmethod
    def tag(kind: str, key: str) -> str:
        """The TensorBoard tag of ``key`` in a ``kind`` (train/eval) record."""
        return f"train/{key}" if kind == "train" else key if "/" in key else f"eval/{key}"

    def __call__(self, record: dict[str, Any]) -> None:
        kind, step = record.get("type"), record.get("global_iter")
        if kind not in ("train", "eval") or step is None:
            return
        for key, value in record.items():
            if key not in NOT_SCALARS and isinstance(value, int | float) and not isinstance(value, bool):
                self.writer.add_scalar(self.tag(kind, key), value, global_step=step, walltime=record.get("time"))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All records of a JSONL metrics file."""
    with Path(path).open("r", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class SmoothedValues:
    """Running medians of the last ``window`` values of named scalars (for the console)."""

    def __init__(self, window: int = 20) -> None:
        self.window = window
        self._values: dict[str, deque[float]] = {}

    def update(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self._values.setdefault(k, deque(maxlen=self.window)).append(float(v))

    def medians(self) -> dict[str, float]:
        out = {}
        for k, q in self._values.items():
            s = sorted(q)
            out[k] = s[len(s) // 2]
        return out


def format_metrics(values: dict[str, float], digits: int = 4) -> str:
    """``k=v`` pairs for a console line."""
    return " ".join(f"{k}={v:.{digits}g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
