"""Exception types raised by the data and evaluation tools.

Every error names the file, id or value at fault so that a bad dataset or results file can be
fixed without a debugger.
"""

from __future__ import annotations


class CocoFormatError(ValueError):
    """A COCO-format JSON file (ground truth or results) is malformed or inconsistent."""


class ImageLoadError(OSError):
    """An image file exists but cannot be decoded (corrupt, truncated or not an image)."""


class DatasetError(ValueError):
    """A dataset split has faults that stop a run before training (the message is the report)."""
