"""One fixed colour per class label, shared by every picture the tools draw (training previews,
``predict.py``, ``analyze.py``): background black, ignored pixels white, classes from a
high-contrast qualitative palette (Kelly's 22 colours of maximum contrast, minus white and black)."""

from __future__ import annotations

import numpy as np

BACKGROUND = (0, 0, 0)
IGNORE = (255, 255, 255)
#: Kelly (1965), "Twenty-two colors of maximum contrast", without white and black
CLASS_COLOURS: tuple[tuple[int, int, int], ...] = (
    (243, 195, 0), (135, 86, 146), (243, 132, 0), (161, 202, 241), (190, 0, 50), (194, 178, 128),
    (132, 132, 130), (0, 136, 86), (230, 143, 172), (0, 103, 165), (249, 147, 121), (96, 78, 151),
    (246, 166, 0), (179, 68, 108), (220, 211, 0), (136, 45, 23), (141, 182, 0), (101, 69, 34),
    (226, 88, 34), (43, 61, 38),
)


def class_colour(label: int) -> tuple[int, int, int]:
    """Colour of class ``label`` (0 = background); labels beyond the palette cycle through it."""
    if label == 0:
        return BACKGROUND
    return CLASS_COLOURS[(label - 1) % len(CLASS_COLOURS)]


def palette_array(num_labels: int, ignore_index: int | None = 255) -> np.ndarray:
    """``uint8 [256, 3]`` lookup table: labels ``0..num_labels-1`` in their colours,
    ``ignore_index`` white, the rest black (for PIL ``P``-mode PNGs and :func:`colorize`)."""
    table = np.zeros((256, 3), dtype=np.uint8)
    for label in range(min(num_labels, 256)):
        table[label] = class_colour(label)
    if ignore_index is not None and 0 <= ignore_index < 256:
        table[ignore_index] = IGNORE
    return table


def colorize(mask: np.ndarray, num_labels: int, ignore_index: int | None = 255) -> np.ndarray:
    """``uint8 [H, W, 3]`` picture of an integer class mask ``[H, W]``."""
    labels = np.asarray(mask).astype(np.int64)
    return palette_array(num_labels, ignore_index)[np.clip(labels, 0, 255)]
