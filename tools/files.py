"""Files written atomically: a temp file in the same folder, flushed to disk, then ``os.replace``,
so a crash (or a second process reading) never sees a partial file. The one writer every tool
uses (checkpoints, configs, metrics JSON, results, the generated dataset)."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PathLike = str | os.PathLike[str]


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a fresh temp path next to ``path``; when the block ends without an error the file
    written there is flushed to disk and moved onto ``path``, else it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: PathLike, data: Any, **dumps_options: Any) -> Path:
    """Write ``data`` as JSON to ``path`` atomically (``dumps_options`` go to ``json.dumps``)."""
    return atomic_write_text(path, json.dumps(data, **dumps_options))


def json_safe(value: Any) -> Any:
    """``value`` as strict JSON: NaN and infinities become null, tuples lists, scalars with
    ``.item()`` (numpy, torch) plain numbers, keys strings."""
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, (dict, list, tuple)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
