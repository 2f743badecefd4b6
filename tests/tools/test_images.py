"""Images of any mode load as upright 8-bit RGB; bad files are errors naming the file."""

from __future__ import annotations

import numpy as np
import pytest
from backbones_tools.data import ImageLoadError, load_rgb
from PIL import Image


def test_grayscale_and_rgba(tmp_path):
    Image.fromarray(np.full((5, 7), 77, np.uint8), mode="L").save(tmp_path / "g.png")
    rgba = np.zeros((5, 7, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 10
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    g, a = load_rgb(tmp_path / "g.png"), load_rgb(tmp_path / "a.png")
    assert g.shape == (5, 7, 3) and g.dtype == np.uint8 and (g == 77).all()
    assert a.shape == (5, 7, 3) and (a[..., 0] == 200).all() and (a[..., 1:] == 0).all()


def test_16bit_png(tmp_path):
    arr = np.array([[0, 0x8000, 0xFFFF]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "d.png")
    assert Image.open(tmp_path / "d.png").mode.startswith("I")
    out = load_rgb(tmp_path / "d.png")
    assert out.shape == (1, 3, 3) and out[0, :, 0].tolist() == [0, 128, 255]


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=95)  # red
    out = load_rgb(tmp_path / "c.jpg")
    assert out.shape == (8, 8, 3)
    assert out[..., 0].mean() > 200 and out[..., 1].mean() < 60 and out[..., 2].mean() < 60


def test_exif_rotation(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)  # left half red
    arr[:, 20:] = (0, 0, 255)  # right half blue
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "r.jpg", quality=95, exif=exif.tobytes())
    out = load_rgb(tmp_path / "r.jpg")
    assert out.shape == (40, 20, 3)  # upright: portrait
    assert out[:18, :, 0].mean() > 200 and out[22:, :, 2].mean() > 200  # red on top


def test_corrupt_and_missing(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(ImageLoadError, match="bad.jpg"):
        load_rgb(tmp_path / "bad.jpg")
    good = tmp_path / "t.jpg"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(good)
    (tmp_path / "trunc.jpg").write_bytes(good.read_bytes()[:200])
    with pytest.raises(ImageLoadError, match="trunc.jpg"):
        load_rgb(tmp_path / "trunc.jpg")
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_rgb(tmp_path / "nope.png")
