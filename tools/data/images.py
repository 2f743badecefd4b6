"""Image decoding: any PIL mode, 16-bit and EXIF orientation, always to 8-bit RGB."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from backbones_tools.data.errors import ImageLoadError
from PIL import Image, ImageOps, UnidentifiedImageError


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert a decoded PIL image of any mode to 8-bit RGB (alpha is dropped)."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        arr = np.asarray(img)
        if img.mode == "F":
            scaled = np.clip(arr, 0.0, 1.0 if arr.max() <= 1.0 else 255.0)
            scaled = scaled * (255.0 if arr.max() <= 1.0 else 1.0)
        else:
            # 16-bit data (I;16*, or I holding values above 255): keep the high byte.
            wide = np.clip(arr.astype(np.int64), 0, 65535)
            scaled = wide >> 8 if img.mode.startswith("I;16") or wide.max() > 255 else wide
        gray = scaled.astype(np.uint8)
        return Image.fromarray(np.stack([gray] * 3, axis=-1), mode="RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    return img.convert("RGB")


def load_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """Load an image as an ``uint8`` array ``[H, W, 3]``, upright per its EXIF orientation.

    Raises FileNotFoundError for a missing file and ImageLoadError (naming the file) for one
    that cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            return np.ascontiguousarray(np.asarray(_to_rgb(img), dtype=np.uint8))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(f"cannot decode image {path}: {exc}") from exc
