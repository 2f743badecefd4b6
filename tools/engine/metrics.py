"""Metrics to a JSONL file (one object a line) and to the console."""

from __future__ import annotations

import json
import math
import os
import time
from collections import deque
from pathlib import Path
from typing import Any


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return _clean(value.item())
    return value


class JsonlWriter:
    """Appends one JSON object per line to ``path`` (flushed each time, so a killed run keeps
    everything logged before it died). Disabled (no file) when ``path`` is None."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` with a wall-clock ``time`` field."""
        if self.path is None:
            return
        line = json.dumps(_clean({**record, "time": round(time.time(), 3)}), sort_keys=False)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")


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
