"""The configs shipped with the package, found the same way in a clone and after ``pip install``.

A wheel carries the repository's ``configs/`` as package data (``backbones_tools/configs``); in a
clone (editable install) they are the top-level ``configs/`` folder next to ``tools/``.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[1]


def shipped_configs_dir() -> Path:
    """The folder holding ``det/``, ``seg/`` and ``bench/``."""
    installed = _PACKAGE / "configs"
    return installed if installed.is_dir() else _PACKAGE.parent / "configs"


def find_config(path: str | Path) -> Path:
    """``path`` as given (relative to the working directory) when it exists, else the shipped
    config of that name: ``configs/det/x.yaml`` and ``det/x.yaml`` both name a shipped one."""
    given = Path(path).expanduser()
    if given.exists() or given.is_absolute():
        return given
    parts = given.parts[1:] if given.parts[:1] == ("configs",) else given.parts
    shipped = shipped_configs_dir().joinpath(*parts) if parts else None
    return shipped if shipped is not None and shipped.is_file() else given


def demo_config(task: str) -> Path:
    """The embedded-dataset demo config of ``task`` (``det`` or ``seg``)."""
    name = "demo_shapes_faster_rcnn_r18.yaml" if task == "det" else "demo_shapes_deeplabv3plus_r18.yaml"
    return shipped_configs_dir() / task / name
